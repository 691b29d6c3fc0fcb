//! Per-plugin resource limits and capabilities.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::PluginError;

/// Resource limits of one wasm plugin call.
///
/// The host's limits are the defaults; a plugin manifest may only lower them
/// ([`Limits::lowered_by`]). Native plugins are trusted and run without limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of linear memory (all memories of the instance together).
    pub memory_bytes: u64,
    /// Most time spent running guest code in one call; time in host calls does not count.
    pub guest_time: Duration,
    /// Most bytes one host call may take in or give out.
    pub host_call_bytes: u64,
    /// Most bytes of native stack for wasm frames.
    pub stack_bytes: u64,
}

impl Limits {
    /// The host defaults: 256 MiB memory, 10 s guest time per call, 4 MiB per host call, 512 KiB
    /// stack.
    pub const HOST_DEFAULTS: Limits = Limits {
        memory_bytes: 256 << 20,
        guest_time: Duration::from_secs(10),
        host_call_bytes: 4 << 20,
        stack_bytes: 512 << 10,
    };

    /// These limits lowered by a manifest's `[limits]`; an error names the first limit the manifest
    /// tries to raise.
    pub fn lowered_by(&self, id: &str, requested: &ManifestLimits) -> Result<Limits, PluginError> {
        let pick = |limit: &'static str, requested: Option<u64>, allowed: u64| match requested {
            Some(r) if r > allowed => Err(PluginError::LimitAboveDefault {
                id: id.to_owned(),
                limit,
                requested: r,
                allowed,
            }),
            Some(r) => Ok(r),
            None => Ok(allowed),
        };
        let memory = pick("memory_mib", requested.memory_mib, self.memory_bytes >> 20)?;
        let time = pick(
            "guest_time_ms",
            requested.guest_time_ms,
            self.guest_time.as_millis() as u64,
        )?;
        let call = pick(
            "host_call_kib",
            requested.host_call_kib,
            self.host_call_bytes >> 10,
        )?;
        let stack = pick("stack_kib", requested.stack_kib, self.stack_bytes >> 10)?;
        Ok(Limits {
            memory_bytes: if requested.memory_mib.is_some() {
                memory << 20
            } else {
                self.memory_bytes
            },
            guest_time: if requested.guest_time_ms.is_some() {
                Duration::from_millis(time)
            } else {
                self.guest_time
            },
            host_call_bytes: if requested.host_call_kib.is_some() {
                call << 10
            } else {
                self.host_call_bytes
            },
            stack_bytes: if requested.stack_kib.is_some() {
                stack << 10
            } else {
                self.stack_bytes
            },
        })
    }
}

/// The `[limits]` table of `plugin.toml`; every key is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Memory cap in MiB
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Guest time per call in milliseconds
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_time_ms: Option<u64>,
    /// Host-call data cap in KiB
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_call_kib: Option<u64>,
    /// Wasm stack in KiB
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_kib: Option<u64>,
}

/// A sandbox capability a wasm plugin may request and a user may grant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Read and write the plugin's own data folder, seen by the plugin as `/data`.
    Filesystem,
    /// Read the wall and monotonic clocks.
    Clock,
    /// See the environment variables the host passes ([`Grants::environment`]).
    Environment,
    /// Open network sockets.
    Network,
}

impl Capability {
    /// All capabilities
    pub const ALL: [Capability; 4] = [
        Capability::Filesystem,
        Capability::Clock,
        Capability::Environment,
        Capability::Network,
    ];

    /// The manifest spelling
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Filesystem => "filesystem",
            Capability::Clock => "clock",
            Capability::Environment => "environment",
            Capability::Network => "network",
        }
    }

    /// Parses the manifest spelling.
    pub fn parse(s: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the user granted: capabilities per plugin id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// `(plugin id, capability)` pairs
    pub granted: BTreeSet<(String, Capability)>,
    /// The environment variables a plugin granted `environment` sees
    pub environment: Vec<(String, String)>,
}

impl Grants {
    /// Nothing granted.
    pub fn none() -> Grants {
        Grants {
            granted: BTreeSet::new(),
            environment: Vec::new(),
        }
    }

    /// Whether `capability` is granted to plugin `id`.
    pub fn allows(&self, id: &str, capability: Capability) -> bool {
        self.granted.contains(&(id.to_owned(), capability))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_lower_but_never_raise() {
        let host = Limits::HOST_DEFAULTS;
        let lowered = host
            .lowered_by(
                "p",
                &ManifestLimits {
                    memory_mib: Some(16),
                    guest_time_ms: Some(250),
                    ..ManifestLimits::default()
                },
            )
            .unwrap();
        assert_eq!(lowered.memory_bytes, 16 << 20);
        assert_eq!(lowered.guest_time, Duration::from_millis(250));
        assert_eq!(lowered.host_call_bytes, host.host_call_bytes);
        assert_eq!(lowered.stack_bytes, host.stack_bytes);

        let err = host
            .lowered_by(
                "p",
                &ManifestLimits {
                    memory_mib: Some(1 << 20),
                    ..ManifestLimits::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin `p`: limit `memory_mib` of 1048576 exceeds the host's 256; a manifest may only lower limits"
        );
    }
}
