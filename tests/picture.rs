//! `map.png` against the RAM file it pictures: a paused boot guest's map decodes, has the
//! expected side, and the pixels of the marker page, an all-zero page, a hole and a page of
//! random bytes have the classes of those pages.

use qemu_bridge_test_support as common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{TestMount, MARKER_ADDR};
use qemu_bridge::ram::{classify, hilbert_point, PageClass, PAGE_SIZE as PAGE};
use qemu_bridge::Vm;

/// The first hole of the file at or after `from` (SEEK_HOLE), page-aligned.
fn hole_at_or_after(file: &std::fs::File, from: u64) -> u64 {
    nix::unistd::lseek(file, from as libc::off_t, nix::unistd::Whence::SeekHole).unwrap() as u64
}

/// The decoded picture: side and RGB pixels.
fn decode(png_bytes: &[u8]) -> (u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0u8; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.width, info.height, "the picture is square");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    pixels.truncate(info.buffer_size());
    (info.width, pixels)
}

fn class_at(side: u32, pixels: &[u8], page: u64) -> PageClass {
    let (x, y) = hilbert_point(side, page);
    let at = (y as usize * side as usize + x as usize) * 3;
    let rgb = [pixels[at], pixels[at + 1], pixels[at + 2]];
    PageClass::ALL
        .into_iter()
        .find(|class| class.color() == rgb)
        .unwrap_or_else(|| panic!("{rgb:?} is no class"))
}

#[test]
#[ignore = "needs QEMU, FUSE or root: run by scripts/test.sh (cargo test -- --include-ignored)"]
fn test_map_png_pictures_each_page_by_class() {
    let (run_dir, vm) = common::booted_vm("picture");
    Vm::existing(&run_dir.run_dir, vm.name()).unwrap().with_qmp(|q| q.stop()).unwrap();
    let ram_path: &Path = &vm.launched.ram_path;
    let ram = std::fs::OpenOptions::new().read(true).write(true).open(ram_path).unwrap();
    // an all-zero page: a hole given a page of zeros (allocated now); a hole left alone; a page
    // of random bytes
    let zero_page = hole_at_or_after(&ram, 32 << 20) / PAGE as u64;
    ram.write_all_at(&[0u8; PAGE], zero_page * PAGE as u64).unwrap();
    let hole_page = hole_at_or_after(&ram, (zero_page + 8) * PAGE as u64) / PAGE as u64;
    let random_page = hole_page + 100;
    ram.write_all_at(&common::noise(PAGE), random_page * PAGE as u64).unwrap();
    assert_eq!(hole_at_or_after(&ram, hole_page * PAGE as u64), hole_page * PAGE as u64, "still a hole");

    let mount = TestMount::new(&run_dir, &[]);
    let map = std::fs::read(mount.path(&format!("{}/map.png", vm.name()))).unwrap();
    let (side, pixels) = decode(&map);
    assert_eq!(side, 128, "64 MiB of pages: 128 x 128");
    let marker_page = MARKER_ADDR / PAGE as u64;
    let mut marker_bytes = vec![0u8; PAGE];
    ram.read_exact_at(&mut marker_bytes, marker_page * PAGE as u64).unwrap();
    assert_eq!(class_at(side, &pixels, marker_page), classify(&marker_bytes), "marker page");
    assert_ne!(classify(&marker_bytes), PageClass::Hole);
    assert_eq!(class_at(side, &pixels, zero_page), PageClass::Zero, "page {zero_page}");
    assert_eq!(class_at(side, &pixels, hole_page), PageClass::Hole, "page {hole_page}");
    assert_eq!(class_at(side, &pixels, random_page), PageClass::Random, "page {random_page}");
    // reading the picture allocated no hole
    assert_eq!(
        hole_at_or_after(&ram, hole_page * PAGE as u64),
        hole_page * PAGE as u64,
        "map.png allocated a hole"
    );
    // every pixel is a class (the square holds exactly the 16384 pages)
    let classes: std::collections::HashSet<PageClass> =
        (0..u64::from(side * side)).map(|page| class_at(side, &pixels, page)).collect();
    assert!(classes.len() >= 4, "{classes:?}");
}
