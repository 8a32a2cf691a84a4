//! Storage tiers: where a rank holds a block (GPU memory, host memory, disk). Each tier
//! has its own index; a lookup in a lower tier earns less overlap credit.

/// Where a KV event's blocks live; lower tiers earn less overlap credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageTier {
    Device,
    Host,
    Disk,
}

impl StorageTier {
    /// Every tier, in index order (device, host, disk).
    pub const ALL: [StorageTier; 3] = [StorageTier::Device, StorageTier::Host, StorageTier::Disk];

    /// The tier's position in [`StorageTier::ALL`] (for per-tier arrays).
    pub fn index(self) -> usize {
        self as usize
    }
}
