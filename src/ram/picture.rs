//! Pictures of guest memory: each 4 KiB page of RAM classified by what it holds, laid out along a
//! Hilbert curve so that neighbouring addresses stay neighbours in the picture.
//!
//! [`classify`] looks at one page; [`page_classes`] classifies all of a guest's RAM without
//! reading (or allocating) its holes; [`LiveMap`] keeps a picture up to date frame by frame and
//! says which pages changed, at the cost of what it looks at (see [`super::tracker`]); [`hilbert_point`] and [`hilbert_index`] place page `i` at a pixel
//! and back; with the `png` feature, [`png()`] encodes a picture.

use serde::Serialize;

use std::sync::Arc;
use std::time::Instant;

use super::guest_ram::GuestRam;
use super::soft_dirty::SoftDirty;
use super::tracker::{Fingerprints, PageBytes};
use super::BridgeError;

/// Bytes per page of the picture (one pixel each): [`super::PAGE_SIZE`].
pub const PAGE: usize = super::PAGE_SIZE;

/// What a page of guest RAM holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum PageClass {
    /// Never allocated: a hole of the RAM file, not read.
    Hole = 0,
    /// Allocated, all zeros.
    Zero = 1,
    /// Mostly printable text.
    Text = 2,
    /// Low-entropy data or code.
    Data = 3,
    /// High entropy: compressed or encrypted data, or random bytes.
    Random = 4,
}

impl PageClass {
    /// Every class, in the order of their numbers.
    pub const ALL: [PageClass; 5] =
        [PageClass::Hole, PageClass::Zero, PageClass::Text, PageClass::Data, PageClass::Random];

    /// Its colour in pictures (RGB), the legend of `map.png` and of `qemu-bridge view`.
    pub fn color(self) -> [u8; 3] {
        match self {
            PageClass::Hole => [0x10, 0x12, 0x16],
            PageClass::Zero => [0x4c, 0x56, 0x6a],
            PageClass::Text => [0xa3, 0xbe, 0x8c],
            PageClass::Data => [0x5e, 0x81, 0xac],
            PageClass::Random => [0xd0, 0x87, 0x70],
        }
    }

    /// What it means, in a few words.
    pub fn description(self) -> &'static str {
        match self {
            PageClass::Hole => "never allocated (a hole, not read)",
            PageClass::Zero => "all zeros",
            PageClass::Text => "mostly printable text",
            PageClass::Data => "data or code (low entropy)",
            PageClass::Random => "high entropy (compressed, encrypted)",
        }
    }

    /// The class numbered `number` (see [`PageClass::ALL`]).
    pub fn from_number(number: u8) -> Option<PageClass> {
        PageClass::ALL.get(usize::from(number)).copied()
    }
}

/// Bytes looked at for the text and entropy tests: every 16th of a page (the zero test looks
/// at all of them). A sample keeps classifying cheaper than reading the page.
const STRIDE: usize = 16;
/// Share of printable samples (out of 256) that makes a page text.
const TEXT_SAMPLES: u32 = 230;
/// Distinct byte values among the 256 samples that make a page high-entropy. Measured on 4 KiB
/// pages: random bytes give 150-173, gzip output 121-177, machine code and tables of libc
/// 63-99, text 36-59.
const RANDOM_DISTINCT: u32 = 115;

/// Printable ASCII, tab, newline and carriage return.
const PRINTABLE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0x20;
    while byte <= 0x7e {
        table[byte] = true;
        byte += 1;
    }
    table[b'\t' as usize] = true;
    table[b'\n' as usize] = true;
    table[b'\r' as usize] = true;
    table
};

/// The class of one page of bytes (of any length; 4 KiB in pictures). Cost: one pass over the
/// page to find zeros (it stops at the first byte that is not), and a sample of 1 byte in 16
/// for the rest.
pub fn classify(page: &[u8]) -> PageClass {
    if page.chunks(256).all(|chunk| chunk.iter().fold(0u8, |acc, &byte| acc | byte) == 0) {
        return PageClass::Zero;
    }
    let mut seen = [0u64; 4];
    let mut printable = 0u32;
    let mut samples = 0u32;
    for chunk in page.chunks(STRIDE) {
        let byte = chunk[0];
        seen[usize::from(byte >> 6)] |= 1 << (byte & 63);
        printable += u32::from(PRINTABLE[usize::from(byte)]);
        samples += 1;
    }
    // scaled to 256 samples, so that short pages are judged alike
    let scale = |count: u32| count * 256 / samples.max(1);
    let distinct: u32 = seen.iter().map(|word| word.count_ones()).sum();
    if scale(printable) >= TEXT_SAMPLES {
        PageClass::Text
    } else if samples >= 64 && scale(distinct) >= RANDOM_DISTINCT {
        PageClass::Random
    } else {
        PageClass::Data
    }
}

/// The classes of all pages of `ram`, in RAM-file order. Holes are [`PageClass::Hole`] and are
/// neither read nor allocated.
///
/// # Errors
///
/// As the copy ([`BridgeError::FileShrunk`]).
pub fn page_classes(ram: &GuestRam) -> Result<Vec<PageClass>, BridgeError> {
    let mut classes = vec![PageClass::Hole; ram.len().div_ceil(PAGE)];
    ram.for_each_page(|page, bytes| {
        if let Some(bytes) = bytes {
            classes[page] = classify(bytes);
        }
    })?;
    Ok(classes)
}

/// Side of the square picture of `pages` pages: the smallest power of two whose square holds
/// them all (64 MiB of pages: 128; 4 GiB: 1024).
pub fn hilbert_side(pages: usize) -> u32 {
    let mut side = 1u64;
    while side * side < pages as u64 {
        side *= 2;
    }
    side as u32
}

/// The pixel `(x, y)` of position `index` along the Hilbert curve filling a `side` x `side`
/// square (`side` a power of two, `index < side * side`). Consecutive indexes are adjacent
/// pixels.
pub fn hilbert_point(side: u32, index: u64) -> (u32, u32) {
    let (mut x, mut y) = (0u64, 0u64);
    let mut rest = index;
    let mut size = 1u64;
    while size < u64::from(side) {
        let rx = 1 & (rest / 2);
        let ry = 1 & (rest ^ rx);
        rotate(size, &mut x, &mut y, rx, ry);
        x += size * rx;
        y += size * ry;
        rest /= 4;
        size *= 2;
    }
    (x as u32, y as u32)
}

/// The position along the Hilbert curve of pixel `(x, y)`: the inverse of [`hilbert_point`].
#[cfg(test)]
pub fn hilbert_index(side: u32, x: u32, y: u32) -> u64 {
    let (mut x, mut y) = (u64::from(x), u64::from(y));
    let mut index = 0u64;
    let mut size = u64::from(side) / 2;
    while size > 0 {
        let rx = u64::from(x & size > 0);
        let ry = u64::from(y & size > 0);
        index += size * size * ((3 * rx) ^ ry);
        rotate(u64::from(side), &mut x, &mut y, rx, ry);
        size /= 2;
    }
    index
}

/// Rotates and flips a quadrant so that the curve's pieces join.
fn rotate(size: u64, x: &mut u64, y: &mut u64, rx: u64, ry: u64) {
    if ry == 0 {
        if rx == 1 {
            *x = size - 1 - *x;
            *y = size - 1 - *y;
        }
        std::mem::swap(x, y);
    }
}

/// A PNG of the picture of `classes`: page `i` at [`hilbert_point`]`(side, i)` in its class's
/// colour (indexed colours), pixels past the last page black.
///
/// # Errors
///
/// When the encoder fails (it writes to memory: only on a broken encoder).
#[cfg(feature = "png")]
pub fn png(classes: &[PageClass]) -> Result<Vec<u8>, std::io::Error> {
    let side = hilbert_side(classes.len());
    // palette index = class number; one more entry, black, for pixels past the last page
    let past_end = PageClass::ALL.len() as u8;
    let mut indexes = vec![past_end; side as usize * side as usize];
    for (index, class) in classes.iter().enumerate() {
        let (x, y) = hilbert_point(side, index as u64);
        indexes[y as usize * side as usize + x as usize] = *class as u8;
    }
    let mut palette: Vec<u8> = PageClass::ALL.iter().flat_map(|class| class.color()).collect();
    palette.extend_from_slice(&[0, 0, 0]);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette);
    encoder.add_text_chunk("Software".into(), "qemu-bridge".into()).map_err(std::io::Error::other)?;
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(&indexes).map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)?;
    Ok(out)
}

/// A picture of a guest's RAM kept up to date: each page's class and a [`Fingerprints`]
/// tracker (8 bytes a page, never a copy of RAM). Each [`update`](Self::update) re-checks the
/// next share of the pages within a time budget and re-classifies only those that changed.
#[derive(Debug)]
pub struct LiveMap {
    prints: Fingerprints,
    classes: Vec<PageClass>,
}

impl LiveMap {
    /// The picture of `ram` now, kept up to date by fingerprints or, given a source, by
    /// soft-dirty bits.
    ///
    /// # Errors
    ///
    /// As the copy ([`BridgeError::FileShrunk`]).
    pub fn new(ram: &GuestRam, soft_dirty: Option<Arc<SoftDirty>>) -> Result<Self, BridgeError> {
        let mut classes = vec![PageClass::Hole; ram.pages()];
        let each = |page, bytes: PageBytes| classes[page] = bytes.map_or(PageClass::Hole, classify);
        let prints = match soft_dirty {
            Some(source) => Fingerprints::with_soft_dirty(ram, source, each)?,
            None => Fingerprints::new(ram, each)?,
        };
        Ok(Self { prints, classes })
    }

    /// The class of every page.
    pub fn classes(&self) -> &[PageClass] {
        &self.classes
    }

    /// The change tracker behind the picture (its method, how fresh it is, its memory).
    pub fn tracker(&self) -> &Fingerprints {
        &self.prints
    }

    /// Looks again until `deadline` (see [`Fingerprints::rescan_until`]): the pages whose bytes
    /// changed since they were last looked at, with their class now (a page that changed keeps
    /// its class when its content is still of the same kind). A hole that the guest filled is
    /// read then.
    ///
    /// # Errors
    ///
    /// As the copy ([`BridgeError::FileShrunk`]).
    pub fn update(
        &mut self,
        ram: &GuestRam,
        deadline: Instant,
    ) -> Result<Vec<(u32, PageClass)>, BridgeError> {
        let mut delta = Vec::new();
        let classes = &mut self.classes;
        self.prints.rescan_until(ram, deadline, |page, bytes| {
            let class = bytes.map_or(PageClass::Hole, classify);
            classes[page] = class;
            delta.push((page as u32, class));
        })?;
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_is_a_bijection_of_adjacent_steps() {
        for side in [1u32, 2, 4, 8, 64, 128] {
            let cells = u64::from(side) * u64::from(side);
            let mut seen = vec![false; cells as usize];
            let mut previous: Option<(u32, u32)> = None;
            for index in 0..cells {
                let (x, y) = hilbert_point(side, index);
                assert!(x < side && y < side);
                let cell = (y * side + x) as usize;
                assert!(!seen[cell], "side {side}: ({x}, {y}) twice");
                seen[cell] = true;
                assert_eq!(hilbert_index(side, x, y), index, "side {side}: not the inverse at {index}");
                if let Some((px, py)) = previous {
                    assert_eq!(
                        px.abs_diff(x) + py.abs_diff(y),
                        1,
                        "side {side}: step {index} is not adjacent"
                    );
                }
                previous = Some((x, y));
            }
        }
    }

    #[test]
    fn sides_are_the_smallest_square_powers_of_two() {
        let pages = |bytes: usize| bytes / PAGE;
        assert_eq!(hilbert_side(pages(64 << 20)), 128);
        assert_eq!(hilbert_side(pages(256 << 20)), 256);
        assert_eq!(hilbert_side(pages(4 << 30)), 1024);
        assert_eq!(hilbert_side(pages(65 << 20)), 256);
        assert_eq!(hilbert_side(1), 1);
        assert_eq!(hilbert_side(0), 1);
    }

    #[test]
    fn crafted_pages_get_their_classes() {
        assert_eq!(classify(&[0u8; PAGE]), PageClass::Zero);
        let mut almost_zero = [0u8; PAGE];
        almost_zero[PAGE - 1] = 1;
        assert_eq!(classify(&almost_zero), PageClass::Data, "one byte makes it not zero");
        let text = b"The quick brown fox jumps over the lazy dog.\n".repeat(100);
        assert_eq!(classify(&text[..PAGE]), PageClass::Text);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..PAGE)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 32) as u8
            })
            .collect();
        assert_eq!(classify(&random), PageClass::Random);
        // a table of small integers, as page tables and arrays of counters look
        let table: Vec<u8> = (0..PAGE).map(|i| if i % 8 == 0 { (i / 8 % 40) as u8 } else { 0 }).collect();
        assert_eq!(classify(&table), PageClass::Data);
        // machine code (the C library's) is data, not high-entropy
        let libc =
            std::fs::read("/lib/x86_64-linux-gnu/libc.so.6").or_else(|_| std::fs::read("/lib64/libc.so.6"));
        if let Ok(libc) = libc {
            for page in libc[0x30000..0x30000 + 16 * PAGE].chunks(PAGE) {
                assert_eq!(classify(page), PageClass::Data);
            }
        }
        // compressed data is high-entropy too
        let compressed = std::process::Command::new("gzip")
            .arg("-c")
            .arg(std::env::current_exe().unwrap())
            .output()
            .expect("gzip")
            .stdout;
        assert_eq!(classify(&compressed[PAGE..2 * PAGE]), PageClass::Random);
    }

    #[test]
    fn classes_have_numbers_colors_and_words() {
        for (number, class) in PageClass::ALL.iter().enumerate() {
            assert_eq!(PageClass::from_number(number as u8), Some(*class));
            assert!(!class.description().is_empty());
        }
        assert_eq!(PageClass::from_number(5), None);
        let colors: std::collections::HashSet<[u8; 3]> = PageClass::ALL.iter().map(|c| c.color()).collect();
        assert_eq!(colors.len(), PageClass::ALL.len(), "two classes share a colour");
    }
}
