//! Whether this x86 CPU is Intel's, for kernels whose fastest instruction choice differs by vendor.

/// True on CPUs whose CPUID vendor is "GenuineIntel" (checked once); false elsewhere.
pub fn is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static INTEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *INTEL.get_or_init(|| {
            // SAFETY: leaf 0 (the vendor) exists on every x86-64 CPU.
            #[allow(unused_unsafe)]
            let id = unsafe { std::arch::x86_64::__cpuid(0) };
            [id.ebx, id.edx, id.ecx] == [*b"Genu", *b"ineI", *b"ntel"].map(u32::from_le_bytes)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}
