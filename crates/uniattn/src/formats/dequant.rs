//! GGML tensor types and their dequantization to f32, following the block layouts of
//! llama.cpp's `ggml-quants.c` (`dequantize_row_*`). Each kernel is checked on a hand-built
//! block in the tests below.
use half::{bf16, f16};

/// The GGML tensor types we can read. Discriminants are the on-disk type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

const QK_K: usize = 256;

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    /// Bytes needed for `n` elements, or `None` if `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_len()).then(|| n / self.block_len() * self.block_bytes())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `data` (exactly `ty.bytes_for(out.len())` bytes) into `out`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    let bl = ty.block_len();
    let bb = ty.block_bytes();
    debug_assert_eq!(Some(data.len()), ty.bytes_for(out.len()));
    for (block, y) in data.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([block[0], block[1], block[2], block[3]]),
            GgmlType::F16 => y[0] = f16_at(block, 0),
            GgmlType::BF16 => y[0] = bf16::from_le_bytes([block[0], block[1]]).to_f32(),
            GgmlType::Q4_0 => q4_0(block, y),
            GgmlType::Q4_1 => q4_1(block, y),
            GgmlType::Q5_0 => q5_0(block, y),
            GgmlType::Q5_1 => q5_1(block, y),
            GgmlType::Q8_0 => q8_0(block, y),
            GgmlType::Q4K => q4_k(block, y),
            GgmlType::Q5K => q5_k(block, y),
            GgmlType::Q6K => q6_k(block, y),
        }
    }
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Shared by Q5_0 and Q5_1: the 5th bit of element j is bit j of `qh`.
fn q5_values(qh: u32, qs: &[u8], j: usize) -> (u8, u8) {
    let h0 = (((qh >> j) << 4) & 0x10) as u8;
    let h1 = ((qh >> (j + 12)) & 0x10) as u8;
    ((qs[j] & 0xF) | h0, (qs[j] >> 4) | h1)
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let (x0, x1) = q5_values(qh, &b[6..], j);
        y[j] = (x0 as i32 - 16) as f32 * d;
        y[j + 16] = (x1 as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let (x0, x1) = q5_values(qh, &b[8..], j);
        y[j] = x0 as f32 * d + m;
        y[j + 16] = x1 as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` packed in the 12 scale bytes of Q4_K/Q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32, ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32)
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (c, chunk) in y.chunks_exact_mut(64).enumerate() {
        let q = &qs[c * 32..c * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        for l in 0..32 {
            chunk[l] = d * sc1 * (q[l] & 0xF) as f32 - min * m1;
            chunk[l + 32] = d * sc2 * (q[l] >> 4) as f32 - min * m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (c, chunk) in y.chunks_exact_mut(64).enumerate() {
        let ql = &qs[c * 32..c * 32 + 32];
        let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            chunk[l] = d * sc1 * ((ql[l] & 0xF) + h1) as f32 - min * m1;
            chunk[l + 32] = d * sc2 * ((ql[l] >> 4) + h2) as f32 - min * m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (n, chunk) in y.chunks_exact_mut(128).enumerate() {
        let ql = &b[n * 64..n * 64 + 64];
        let qh = &b[128 + n * 32..128 + n * 32 + 32];
        let sc = &b[192 + n * 8..192 + n * 8 + 8];
        let s = |i: usize| d * (sc[i] as i8) as f32;
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            chunk[l] = s(is) * q1 as f32;
            chunk[l + 32] = s(is + 2) * q2 as f32;
            chunk[l + 64] = s(is + 4) * q3 as f32;
            chunk[l + 96] = s(is + 6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn run(ty: GgmlType, block: &[u8]) -> Vec<f32> {
        assert_eq!(block.len(), ty.block_bytes());
        let mut y = vec![f32::NAN; ty.block_len()];
        dequantize(ty, block, &mut y);
        y
    }

    #[test]
    fn plain_floats() {
        let mut b = Vec::new();
        b.extend(1.5f32.to_le_bytes());
        b.extend((-2.25f32).to_le_bytes());
        let mut y = [0.0; 2];
        dequantize(GgmlType::F32, &b, &mut y);
        assert_eq!(y, [1.5, -2.25]);
        let b: Vec<u8> = [h(0.5), h(-3.0)].concat();
        dequantize(GgmlType::F16, &b, &mut y);
        assert_eq!(y, [0.5, -3.0]);
        let b: Vec<u8> = [bf16::from_f32(7.0).to_le_bytes(), bf16::from_f32(-0.125).to_le_bytes()].concat();
        dequantize(GgmlType::BF16, &b, &mut y);
        assert_eq!(y, [7.0, -0.125]);
    }

    #[test]
    fn q4_0_block() {
        // Nibble j holds j (low) and 15-j (high): values (j-8)*d and (7-j)*d.
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = run(GgmlType::Q4_0, &b);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_block() {
        let mut b = [h(0.25), h(-1.0)].concat();
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let y = run(GgmlType::Q4_1, &b);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.25 - 1.0);
            assert_eq!(y[j + 16], 3.0 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q5_0_block() {
        // High bits set for elements 0 (low half) and 16+1 (bit 17 -> high half, j=1).
        let mut b = h(2.0).to_vec();
        b.extend((1u32 | (1 << 17)).to_le_bytes());
        b.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let y = run(GgmlType::Q5_0, &b);
        assert_eq!(y[0], (16 + 1 - 16) as f32 * 2.0);
        assert_eq!(y[1], (1 - 16) as f32 * 2.0);
        assert_eq!(y[16], (2 - 16) as f32 * 2.0);
        assert_eq!(y[17], (16 + 2 - 16) as f32 * 2.0);
    }

    #[test]
    fn q5_1_block() {
        let mut b = [h(1.0), h(0.5)].concat();
        b.extend((1u32 << 31).to_le_bytes());
        b.extend([0x00u8; 16]);
        let y = run(GgmlType::Q5_1, &b);
        assert_eq!(y[0], 0.5);
        assert_eq!(y[31], 16.0 + 0.5);
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let y = run(GgmlType::Q8_0, &b);
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.5);
        }
    }

    /// Packs eight 6-bit (scale, min) pairs the way llama.cpp's `make_qkx2_quants` callers do.
    fn pack_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        q
    }

    #[test]
    fn scale_packing_roundtrip() {
        let sc = [1, 17, 33, 63, 40, 5, 62, 16];
        let m = [0, 2, 63, 9, 48, 31, 7, 59];
        let q = pack_scales(sc, m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (sc[j] as f32, m[j] as f32));
        }
    }

    #[test]
    fn q4_k_block() {
        let sc = [1, 2, 3, 4, 5, 6, 7, 63];
        let m = [0, 1, 2, 3, 4, 5, 6, 40];
        let mut b = [h(0.5), h(0.25)].concat();
        b.extend(pack_scales(sc, m));
        b.extend((0..128).map(|i| ((i % 16) as u8) | (((i / 16) as u8 % 16) << 4)));
        let y = run(GgmlType::Q4K, &b);
        for (i, v) in y.iter().enumerate() {
            let (c, l, hi) = (i / 64, i % 32, (i % 64) >= 32);
            let byte = c * 32 + l;
            let q = if hi { (byte / 16) % 16 } else { byte % 16 } as f32;
            let sub = 2 * c + hi as usize;
            assert_eq!(*v, 0.5 * sc[sub] as f32 * q - 0.25 * m[sub] as f32, "element {i}");
        }
    }

    #[test]
    fn q5_k_block() {
        let sc = [3; 8];
        let m = [1; 8];
        let mut b = [h(1.0), h(2.0)].concat();
        b.extend(pack_scales(sc, m));
        // qh byte l: bit 2c marks element (c, l) low half, bit 2c+1 the high half.
        b.extend((0..32).map(|l| if l % 2 == 0 { 0b0101_0101u8 } else { 0b1010_1010 }));
        b.extend([0x73u8; 128]); // low nibble 3, high nibble 7
        let y = run(GgmlType::Q5K, &b);
        for (i, v) in y.iter().enumerate() {
            let (l, hi) = (i % 32, (i % 64) >= 32);
            let q = if hi { 7 } else { 3 } + if (l % 2 == 0) != hi { 16 } else { 0 };
            assert_eq!(*v, 3.0 * q as f32 - 2.0, "element {i}");
        }
    }

    #[test]
    fn q6_k_block() {
        let mut b = Vec::new();
        b.extend((0..128).map(|i| (i % 16) as u8 | (((i + 1) % 16) << 4) as u8)); // ql
        b.extend([0b1110_0100u8; 64]); // qh: 2-bit fields 0,1,2,3
        b.extend((0..16).map(|i| (i as i8 - 8) as u8)); // scales
        b.extend(h(0.5));
        let y = run(GgmlType::Q6K, &b);
        for (i, v) in y.iter().enumerate() {
            let (n, r) = (i / 128, i % 128);
            let (quarter, l) = (r / 32, r % 32);
            let ql_index = n * 64 + l + if quarter % 2 == 1 { 32 } else { 0 };
            let nib = if quarter < 2 { ql_index % 16 } else { (ql_index + 1) % 16 };
            let q = (nib as i32 | ((quarter as i32) << 4)) - 32;
            let s = (n * 8 + l / 16 + 2 * quarter) as i32 - 8;
            assert_eq!(*v, 0.5 * s as f32 * q as f32, "element {i}");
        }
    }
}
