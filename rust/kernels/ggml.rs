//! The GGUF tensor types the block kernels read: ids, block geometry, and the activation format each pairs with.
//!
//! A GGUF weight is stored [n_out, n_in] row-major, each row a run of blocks along the inputs
//! (ggml's layout). Every type below is multiplied with activations rounded the way
//! llama.cpp's CPU backend rounds them for that type (its `vec_dot_type`), so results follow
//! llama.cpp's numbers rather than an f32 product of dequantized weights.

/// A ggml tensor type that has a kernel (the numeric ids are ggml's `ggml_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// How a row of activations is rounded before it meets a weight of a given type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActFormat {
    /// Exact f32 values.
    F32,
    /// Rounded to f16 (to nearest even), products summed in f32.
    F16,
    /// Rounded to bf16 (to nearest even), products summed in f32.
    Bf16,
    /// int8 per block of 32 with an f16 scale (llama.cpp's Q8_0).
    Q8_0,
    /// Q8_0 plus the f16-rounded scale times the block's sum (llama.cpp's Q8_1).
    Q8_1,
    /// int8 per block of 256 with an f32 scale and sums per 16 (llama.cpp's Q8_K).
    Q8K,
}

pub const ALL_TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Values per block of the 32-value formats (Q4_0 ... Q8_0) and of Q8_0/Q8_1 activations.
pub const QK32: usize = 32;
/// Values per super-block of the K-quants and of Q8_K activations.
pub const QK_K: usize = 256;

impl GgmlType {
    /// The type with ggml's numeric id, if it has a kernel.
    pub fn from_id(id: i64) -> Option<GgmlType> {
        ALL_TYPES.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> i64 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Values per block (1 for the float formats).
    pub fn block_values(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                QK32
            }
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
    }

    /// The activation rounding llama.cpp's CPU backend pairs with this weight type.
    pub fn act_format(self) -> ActFormat {
        match self {
            GgmlType::F32 => ActFormat::F32,
            GgmlType::F16 => ActFormat::F16,
            GgmlType::Bf16 => ActFormat::Bf16,
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => ActFormat::Q8_0,
            GgmlType::Q4_1 | GgmlType::Q5_1 => ActFormat::Q8_1,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => ActFormat::Q8K,
        }
    }

    /// Bytes of one row of `n_in` values, or an error when `n_in` is not a whole number of blocks.
    pub fn row_bytes(self, n_in: usize) -> Result<usize, String> {
        let block = self.block_values();
        if n_in == 0 || !n_in.is_multiple_of(block) {
            return Err(format!(
                "{} rows hold whole blocks of {block} values; {n_in} inputs do not",
                self.name()
            ));
        }
        (n_in / block)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| "row size overflows".to_string())
    }
}

/// A weight as its GGUF file stores it: `n_out` rows of `row_bytes` bytes, checked against its type.
#[derive(Clone, Copy, Debug)]
pub struct BlockWeight<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub n_in: usize,
    pub n_out: usize,
    pub row_bytes: usize,
}

impl<'a> BlockWeight<'a> {
    pub fn new(ty: GgmlType, data: &'a [u8], n_in: usize, n_out: usize) -> Result<Self, String> {
        let row_bytes = ty.row_bytes(n_in)?;
        let want = row_bytes
            .checked_mul(n_out)
            .ok_or_else(|| "weight size overflows".to_string())?;
        if data.len() != want {
            return Err(format!(
                "{} weight [{n_out}, {n_in}] needs {want} bytes, got {}",
                ty.name(),
                data.len()
            ));
        }
        Ok(BlockWeight {
            ty,
            data,
            n_in,
            n_out,
            row_bytes,
        })
    }

    /// The bytes of output row `i`.
    pub fn row(&self, i: usize) -> &'a [u8] {
        &self.data[i * self.row_bytes..(i + 1) * self.row_bytes]
    }
}

/// f16 bits to f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Little-endian u16 at `at`.
#[inline]
pub fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(16), None); // IQ2_XXS has no kernel
        assert_eq!(GgmlType::Q4K.row_bytes(2048).unwrap(), 8 * 144);
        assert_eq!(GgmlType::Q8_0.row_bytes(64).unwrap(), 68);
        assert_eq!(GgmlType::F16.row_bytes(7).unwrap(), 14);
        assert!(GgmlType::Q6K.row_bytes(128).unwrap_err().contains("256"));
        assert!(GgmlType::Q4_0.row_bytes(0).is_err());
        let data = vec![0u8; 3 * 68];
        assert!(BlockWeight::new(GgmlType::Q8_0, &data, 64, 3).is_ok());
        let err = BlockWeight::new(GgmlType::Q8_0, &data[..200], 64, 3).unwrap_err();
        assert!(err.contains("needs 204 bytes"), "{err}");
    }
}
