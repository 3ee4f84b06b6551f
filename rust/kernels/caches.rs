//! The size of one core's L2 cache, read once from Linux sysfs, for kernels that block work to it.

use std::sync::OnceLock;

/// What a kernel assumes where sysfs does not say (not Linux, or a container hiding it):
/// the smallest L2 of the x86 cores these kernels target.
const FALLBACK_L2_BYTES: usize = 1 << 20;

/// One core's L2 in bytes (cpu0's; cores of one machine share a size).
pub fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| read_l2().unwrap_or(FALLBACK_L2_BYTES))
}

fn read_l2() -> Option<usize> {
    let root = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(root).ok()?.flatten().find_map(|entry| {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        let level = read("level")?;
        let kind = read("type")?;
        if level.trim() != "2" || kind.trim() == "Instruction" {
            return None;
        }
        parse_size(read("size")?.trim())
    })
}

/// "2048K", "1M" or "524288" as bytes.
fn parse_size(text: &str) -> Option<usize> {
    let (digits, unit) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1 << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1 << 20),
        _ => (text, 1),
    };
    digits
        .parse::<usize>()
        .ok()?
        .checked_mul(unit)
        .filter(|&b| b > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_size("2048K"), Some(2 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("524288"), Some(524288));
        assert_eq!(parse_size("0K"), None);
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("12x"), None);
    }

    #[test]
    fn the_l2_is_a_plausible_size() {
        let bytes = l2_bytes();
        assert!((64 << 10..=64 << 20).contains(&bytes), "{bytes}");
    }
}
