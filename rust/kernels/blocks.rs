//! GGUF blocks decoded one at a time into their integer values and scales, and rows dequantized to f32.
//!
//! The portable kernels and the embedding lookup read blocks through here; the AVX-512
//! kernels decode the same bytes sixteen rows at a time (`tiles`) and must agree with it.
//! Layouts follow ggml-common.h; dequantized values follow the `gguf` package's reference
//! dequantizers operation for operation, so `dequantize_row` is bit-equal to them.

use super::ggml::{f16_to_f32, read_u16, GgmlType, QK32, QK_K};

/// A 32-value block: unsigned stored values, the zero point the format subtracts from them,
/// the scale, and the minimum added after scaling (Q4_1 and Q5_1; zero otherwise).
/// Q8_0's signed values are stored + 128 with a zero point of 128, so every format feeds
/// unsigned bytes to the integer dot products.
pub struct Block32 {
    pub q: [u8; QK32],
    pub zero: i32,
    pub d: f32,
    pub m: f32,
}

/// A 256-value K-quant super-block: unsigned values, the integer scale of each 16 values
/// (Q4_K/Q5_K repeat each 32-value scale twice), the integer minimum of each 32 values
/// (Q6_K: none), the zero point (Q6_K: 32) and the f16 super-scales.
pub struct SuperBlock {
    pub q: [u8; QK_K],
    pub scales: [i32; 16],
    pub mins: [i32; 8],
    pub zero: i32,
    pub d: f32,
    pub dmin: f32,
}

/// Decodes one block of a 32-value format (`bytes` holds exactly that block).
pub fn decode_block32(ty: GgmlType, bytes: &[u8]) -> Block32 {
    let d = f16_to_f32(read_u16(bytes, 0));
    let mut q = [0u8; QK32];
    let nibbles = |q: &mut [u8; QK32], qs: &[u8]| {
        for j in 0..16 {
            q[j] = qs[j] & 0x0f;
            q[j + 16] = qs[j] >> 4;
        }
    };
    let high_bits = |q: &mut [u8; QK32], qh: u32| {
        for (j, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) << 4) as u8;
        }
    };
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    match ty {
        GgmlType::Q4_0 => {
            nibbles(&mut q, &bytes[2..18]);
            Block32 {
                q,
                zero: 8,
                d,
                m: 0.0,
            }
        }
        GgmlType::Q4_1 => {
            nibbles(&mut q, &bytes[4..20]);
            let m = f16_to_f32(read_u16(bytes, 2));
            Block32 { q, zero: 0, d, m }
        }
        GgmlType::Q5_0 => {
            nibbles(&mut q, &bytes[6..22]);
            high_bits(&mut q, word(2));
            Block32 {
                q,
                zero: 16,
                d,
                m: 0.0,
            }
        }
        GgmlType::Q5_1 => {
            nibbles(&mut q, &bytes[8..24]);
            high_bits(&mut q, word(4));
            let m = f16_to_f32(read_u16(bytes, 2));
            Block32 { q, zero: 0, d, m }
        }
        GgmlType::Q8_0 => {
            for (v, &b) in q.iter_mut().zip(&bytes[2..34]) {
                *v = b ^ 0x80;
            }
            Block32 {
                q,
                zero: 128,
                d,
                m: 0.0,
            }
        }
        _ => unreachable!("{} is not a 32-value block format", ty.name()),
    }
}

/// The 6-bit scale and minimum of sub-block j (0..8) packed in Q4_K/Q5_K's 12 scale bytes.
pub fn scale_min_k4(j: usize, s: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((s[j] & 63) as i32, (s[j + 4] & 63) as i32)
    } else {
        (
            ((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4)) as i32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32,
        )
    }
}

/// Decodes one K-quant super-block (`bytes` holds exactly that block).
pub fn decode_superblock(ty: GgmlType, bytes: &[u8]) -> SuperBlock {
    let mut b = SuperBlock {
        q: [0; QK_K],
        scales: [0; 16],
        mins: [0; 8],
        zero: 0,
        d: 0.0,
        dmin: 0.0,
    };
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            b.d = f16_to_f32(read_u16(bytes, 0));
            b.dmin = f16_to_f32(read_u16(bytes, 2));
            let scales = &bytes[4..16];
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                b.scales[2 * j] = sc;
                b.scales[2 * j + 1] = sc;
                b.mins[j] = m;
            }
            let (qh, qs) = if ty == GgmlType::Q5K {
                (Some(&bytes[16..48]), &bytes[48..176])
            } else {
                (None, &bytes[16..144])
            };
            for c in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * c + l];
                    let (mut lo, mut hi) = (byte & 0x0f, byte >> 4);
                    if let Some(qh) = qh {
                        lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                        hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                    }
                    b.q[64 * c + l] = lo;
                    b.q[64 * c + 32 + l] = hi;
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh) = (&bytes[0..128], &bytes[128..192]);
            for (j, s) in b.scales.iter_mut().enumerate() {
                *s = bytes[192 + j] as i8 as i32;
            }
            b.d = f16_to_f32(read_u16(bytes, 208));
            b.zero = 32;
            for half in 0..2 {
                let (ql, qh, v) = (&ql[64 * half..], &qh[32 * half..], 128 * half);
                for l in 0..32 {
                    b.q[v + l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                    b.q[v + l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                    b.q[v + l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    b.q[v + l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
        }
        _ => unreachable!("{} is not a K-quant", ty.name()),
    }
    b
}

/// One row of `ty` (exactly `row_bytes` bytes) as f32 values, bit-equal to `gguf.quants.dequantize`.
pub fn dequantize_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out
            .iter_mut()
            .zip(row.chunks_exact(4))
            .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => out
            .iter_mut()
            .zip(row.chunks_exact(2))
            .for_each(|(o, b)| *o = f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        GgmlType::Bf16 => out.iter_mut().zip(row.chunks_exact(2)).for_each(|(o, b)| {
            *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
        }),
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
            for (bytes, out) in row
                .chunks_exact(ty.block_bytes())
                .zip(out.chunks_exact_mut(QK32))
            {
                let b = decode_block32(ty, bytes);
                for (o, &q) in out.iter_mut().zip(&b.q) {
                    // gguf: d · (q - zero) for the symmetric formats, d · q + m for the others.
                    *o = if ty == GgmlType::Q4_1 || ty == GgmlType::Q5_1 {
                        b.d * q as f32 + b.m
                    } else {
                        b.d * (q as i32 - b.zero) as f32
                    };
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            for (bytes, out) in row
                .chunks_exact(ty.block_bytes())
                .zip(out.chunks_exact_mut(QK_K))
            {
                let b = decode_superblock(ty, bytes);
                for (i, (o, &q)) in out.iter_mut().zip(&b.q).enumerate() {
                    let scale = b.d * b.scales[i / 16] as f32;
                    *o = if ty == GgmlType::Q6K {
                        scale * (q as i32 - 32) as f32
                    } else {
                        scale * q as f32 - b.dmin * b.mins[i / 32] as f32
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_scales_unpack_as_ggml_documents() {
        // Scales 0..3 and mins 0..3 are the low 6 bits of bytes 0..7; 4..7 combine nibbles of
        // bytes 8..11 with the top two bits of bytes 0..7.
        let s = [
            0b11_000001,
            0b00_000010,
            3,
            4,
            0b10_000101,
            6,
            7,
            8,
            0xA9,
            0x0B,
            0x0C,
            0x0D,
        ];
        assert_eq!(scale_min_k4(0, &s), (1, 5));
        assert_eq!(scale_min_k4(1, &s), (2, 6));
        assert_eq!(scale_min_k4(4, &s), (0x9 | (0b11 << 4), 0xA | (0b10 << 4)));
        assert_eq!(scale_min_k4(5, &s), (0xB, 0));
    }

    #[test]
    fn q8_0_values_and_dequantization() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        block[2] = (-3i8) as u8;
        block[3] = 127;
        let b = decode_block32(GgmlType::Q8_0, &block);
        assert_eq!(b.q[0] as i32 - b.zero, -3);
        assert_eq!(b.q[1] as i32 - b.zero, 127);
        let mut out = [0.0f32; 32];
        dequantize_row(GgmlType::Q8_0, &block, &mut out);
        assert_eq!(&out[..3], &[-1.5, 63.5, 0.0]);
    }

    #[test]
    fn q5_0_high_bits_come_from_the_word_after_the_scale() {
        let mut block = vec![0u8; 22];
        block[..2].copy_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
        block[2..6].copy_from_slice(&(1u32 | 1 << 17).to_le_bytes());
        block[6] = 0x21; // value 0: 1, value 16: 2
        block[7] = 0x43; // value 1: 3, value 17: 4
        let b = decode_block32(GgmlType::Q5_0, &block);
        assert_eq!((b.q[0], b.q[16], b.q[1], b.q[17]), (17, 2, 3, 20));
    }
}
