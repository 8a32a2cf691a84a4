//! [`WorkerRegistration`]: one worker as an operator writes it — a `[[workers]]` table in
//! the config file, a `--worker key=value,...` flag, or the body of `POST /v1/workers` —
//! and its conversion to the core's [`WorkerSpec`].
//!
//! The fields are flat (`bootstrap_host`, `bootstrap_port`) so that the same names work in
//! all three places; `block_size` may be left out and defaults to the router's.

use kvroute_core::route::{BootstrapEndpoint, Role, WorkerSpec};
use kvroute_core::WorkerId;

/// A worker to register: its id, the DP ranks it owns, its role and, for prefill workers,
/// where the decode side fetches the KV (SGLang's bootstrap server).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistration {
    /// The worker's id (the id its KV events and certificate carry).
    pub worker_id: u64,
    /// First DP rank this worker owns (a multi-node DP server splits its ranks). Default 0.
    #[serde(default)]
    pub dp_start: u32,
    /// Number of DP ranks it owns: `dp_start..dp_start + dp_size`.
    pub dp_size: u32,
    /// DP size of the whole server (the modulus of SGLang's `room % dp_size`); default
    /// `dp_start + dp_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_world_size: Option<u32>,
    /// `prefill`, `decode` or `both` (aggregated serving). Default `both`.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Host of the prefill worker's bootstrap server (required for `prefill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_host: Option<String>,
    /// Port of the bootstrap server (omitted: sent as null, as SGLang allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_port: Option<u16>,
    /// Tokens per KV block; must equal the router's. Default: the router's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

fn default_role() -> Role {
    Role::Both
}

/// The syntax of `--worker`, for error messages and help.
pub const WORKER_FLAG_SYNTAX: &str = "worker_id=N,dp_size=N[,dp_start=N][,dp_world_size=N][,role=prefill|decode|both]\
[,bootstrap_host=HOST][,bootstrap_port=PORT][,block_size=N]";

impl WorkerRegistration {
    /// The core registration, with `router_block_size` where none was given.
    pub fn to_spec(&self, router_block_size: u32) -> Result<WorkerSpec, String> {
        let bootstrap = match (&self.bootstrap_host, self.bootstrap_port) {
            (Some(host), port) => Some(BootstrapEndpoint { host: host.clone(), port }),
            (None, Some(_)) => return Err("bootstrap_port is set but bootstrap_host is not".to_owned()),
            (None, None) => None,
        };
        Ok(WorkerSpec {
            worker: WorkerId(self.worker_id),
            dp_start: self.dp_start,
            dp_size: self.dp_size,
            dp_world_size: self.dp_world_size,
            block_size: self.block_size.unwrap_or(router_block_size),
            role: self.role,
            bootstrap,
        })
    }

    /// Parses the `--worker` flag: comma-separated `key=value` pairs with the TOML keys.
    pub fn parse_flag(text: &str) -> Result<WorkerRegistration, String> {
        let mut worker_id = None;
        let mut dp_size = None;
        let mut registration = WorkerRegistration {
            worker_id: 0,
            dp_start: 0,
            dp_size: 0,
            dp_world_size: None,
            role: Role::Both,
            bootstrap_host: None,
            bootstrap_port: None,
            block_size: None,
        };
        for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value; expected {WORKER_FLAG_SYNTAX}"))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "worker_id" => worker_id = Some(parse_number(key, value)?),
                "dp_size" => dp_size = Some(parse_number(key, value)?),
                "dp_start" => registration.dp_start = parse_number(key, value)?,
                "dp_world_size" => registration.dp_world_size = Some(parse_number(key, value)?),
                "block_size" => registration.block_size = Some(parse_number(key, value)?),
                "bootstrap_port" => registration.bootstrap_port = Some(parse_number(key, value)?),
                "bootstrap_host" => registration.bootstrap_host = Some(value.to_owned()),
                "role" => {
                    registration.role = match value {
                        "prefill" => Role::Prefill,
                        "decode" => Role::Decode,
                        "both" => Role::Both,
                        _ => return Err(format!("role `{value}` is not one of prefill, decode, both")),
                    }
                }
                _ => return Err(format!("unknown key `{key}`; expected {WORKER_FLAG_SYNTAX}")),
            }
        }
        registration.worker_id =
            worker_id.ok_or_else(|| format!("worker_id is missing; expected {WORKER_FLAG_SYNTAX}"))?;
        registration.dp_size = dp_size.ok_or_else(|| format!("dp_size is missing; expected {WORKER_FLAG_SYNTAX}"))?;
        Ok(registration)
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|error| format!("{key}={value}: {error}"))
}
