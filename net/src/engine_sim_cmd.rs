//! `kvroute engine-sim`: runs one simulated vLLM or SGLang server (see
//! `kvroute_net::engine_sim`) until ctrl-c.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kvroute_core::engine_events::encode::EngineFormat;
use kvroute_core::sim::{EngineModelConfig, EngineTiming};
use kvroute_net::engine_sim::{DisaggregationMode, EngineKind, EngineSim, EngineSimConfig};
use kvroute_net::serve::config::LogSettings;
use kvroute_net::serve::logging::init_logging;
use kvroute_net::serve::options::LogFormat;
use kvroute_net::tokenization::{PromptTokenizer, TokenizerSource};

use crate::command_error::{error, CommandError};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example: a vLLM-like server with 4 DP ranks on port 8100, its KV events on \
tcp://*:5557..5560 (replay 5600..5603), and kvroute in front of it (its proxy forwarding to the server, its index \
fed by the server's events):\n  kvroute engine-sim --port 8100 --dp-size 4\n  \
kvroute serve --insecure-loopback --worker worker_id=0,dp_size=4,url=http://127.0.0.1:8100,endpoint=tcp://127.0.0.1:5557,replay=tcp://127.0.0.1:5600\n  \
curl localhost:8080/v1/completions -d '{\"prompt\": \"hello\", \"max_tokens\": 4}'\n\n\
Text prompts are tokenized one token per UTF-8 byte unless --tokenizer names a model's tokenizer.json; \
POST /tokenize shows the ids. GET /sim/stats gives \
each rank's requests, cached tokens and blocks held.")]
pub struct EngineSimArgs {
    /// The engine to imitate: its KV-event encoding and server-info answers (both kinds
    /// serve the OpenAI API and SGLang's /generate).
    #[arg(long, value_enum, default_value = "vllm")]
    engine: EngineKind,
    /// HTTP listen address.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// HTTP port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Data-parallel ranks, each with its own cache, prefill queue and event stream.
    #[arg(long, default_value_t = 1)]
    dp_size: u32,
    /// Tokens per KV block (vLLM's block_size, SGLang's page_size).
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// KV blocks each rank's cache holds (LRU eviction past it).
    #[arg(long, default_value_t = 16_384)]
    capacity_blocks: usize,
    /// Longest prompt accepted, in tokens.
    #[arg(long, default_value_t = 131_072)]
    max_prompt_tokens: usize,
    /// The model name requests must give (and /v1/models lists).
    #[arg(long, default_value = "kvroute-sim")]
    served_model_name: String,
    /// A LoRA adapter served beside the base model (repeatable): requests naming it hash
    /// their blocks under it.
    #[arg(long = "lora", value_name = "NAME")]
    lora_adapters: Vec<String>,
    /// Rank r's KV-event PUB socket binds this port + r (0: any free port per rank).
    #[arg(long, default_value_t = 5557)]
    kv_events_port: u16,
    /// Rank r's replay ROUTER binds this port + r (0: any free port per rank).
    #[arg(long, default_value_t = 5600)]
    replay_port: u16,
    /// Publish no KV events.
    #[arg(long)]
    no_kv_events: bool,
    /// Open no replay sockets.
    #[arg(long)]
    no_replay: bool,
    /// Interface the ZeroMQ sockets bind (`*`: all).
    #[arg(long, default_value = "*")]
    kv_events_host: String,
    /// Event encoding: vllm-map, vllm-array, sglang-map, sglang-array (default: the
    /// engine's newest, a map form).
    #[arg(long, value_parser = parse_event_format)]
    event_format: Option<EngineFormat>,
    /// ZeroMQ topic of every message.
    #[arg(long, default_value = "")]
    topic: String,
    /// Fixed cost of each prefill.
    #[arg(long, default_value = "2ms", value_parser = humantime::parse_duration)]
    prefill_overhead: Duration,
    /// Prefill cost per prompt token not in the cache.
    #[arg(long, default_value = "50us", value_parser = humantime::parse_duration)]
    prefill_per_token: Duration,
    /// Time between output tokens of a request.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    decode_per_token: Duration,
    /// SGLang's prefill/decode disaggregation: `prefill` (records each request's
    /// bootstrap_room for the decode side, answers after one token), `decode` (fetches the
    /// KV from the prefill server the request names, checking the room rule) or `null`.
    #[arg(long, value_enum, default_value = "null")]
    disaggregation_mode: DisaggregationMode,
    /// Prefill servers: dispatch a request that names no DP rank by load, not by
    /// `bootstrap_room % dp_size`; decode servers then take the rank the bootstrap lookup
    /// reports instead of checking the room rule (for routers that send no prefill rank
    /// matching the room, such as smg's P/D mode).
    #[arg(long)]
    no_follow_bootstrap_room: bool,
    /// How text prompts and chat messages become token ids: `bytes` (one token per UTF-8
    /// byte, a built-in chat format) or a model's tokenizer.json / model directory (its
    /// chat template from chat_template.jinja or tokenizer_config.json beside it). Give a
    /// router the same one to find this server's cached prefixes from text.
    #[arg(long, default_value = "bytes", value_name = "bytes|PATH")]
    tokenizer: TokenizerSource,
    /// The chat template (Jinja source, or a tokenizer_config.json), over the tokenizer's.
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
}

fn parse_event_format(name: &str) -> Result<EngineFormat, String> {
    EngineFormat::ALL.into_iter().find(|format| format.name() == name).ok_or_else(|| {
        let names: Vec<&str> = EngineFormat::ALL.iter().map(|format| format.name()).collect();
        format!("unknown event format `{name}`; one of {}", names.join(", "))
    })
}

impl EngineSimArgs {
    fn config(&self) -> Result<EngineSimConfig, CommandError> {
        let tokenizer = PromptTokenizer::load(&self.tokenizer, self.chat_template.as_deref()).map_err(error)?;
        let mut config = EngineSimConfig::new(self.engine, SocketAddr::new(self.host, self.port));
        config.served_model_name.clone_from(&self.served_model_name);
        config.lora_adapters.clone_from(&self.lora_adapters);
        config.model = EngineModelConfig {
            dp_size: self.dp_size,
            block_size: self.block_size,
            capacity_blocks: self.capacity_blocks,
            max_prompt_tokens: self.max_prompt_tokens,
            timing: EngineTiming {
                prefill_overhead: self.prefill_overhead,
                prefill_per_token: self.prefill_per_token,
                decode_per_token: self.decode_per_token,
            },
        };
        config.kv_events_port = (!self.no_kv_events).then_some(self.kv_events_port);
        config.replay_port = (!self.no_replay).then_some(self.replay_port);
        config.kv_events_host.clone_from(&self.kv_events_host);
        config.event_format = self.event_format.unwrap_or(self.engine.default_event_format());
        config.topic.clone_from(&self.topic);
        config.disaggregation = self.disaggregation_mode;
        config.follow_bootstrap_room = !self.no_follow_bootstrap_room;
        config.tokenizer = Arc::new(tokenizer);
        Ok(config)
    }
}

pub fn run(args: &EngineSimArgs) -> Result<(), CommandError> {
    init_logging(&LogSettings { format: LogFormat::Text, filter: None }).map_err(|e| error(e.to_string()))?;
    let config = args.config()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| error(format!("tokio runtime: {e}")))?;
    runtime.block_on(async {
        let sim = EngineSim::start(config.clone()).await.map_err(|e| error(e.to_string()))?;
        let events =
            match (0..config.model.dp_size).map(|rank| sim.subscriber_endpoint(rank)).collect::<Option<Vec<_>>>() {
                Some(endpoints) if !endpoints.is_empty() => {
                    let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
                    format!("KV events ({}) on {}", config.event_format.name(), list.join(", "))
                }
                _ => "no KV events".to_owned(),
            };
        let replay: Vec<String> =
            (0..config.model.dp_size).filter_map(|rank| sim.replay_endpoint(rank)).map(|e| e.to_string()).collect();
        println!(
            "kvroute engine-sim ({}): http://{}, model `{}`, {} rank(s), block size {}; {}{}",
            config.kind.name(),
            sim.http_address(),
            config.served_model_name,
            config.model.dp_size,
            config.model.block_size,
            events,
            if replay.is_empty() { String::new() } else { format!(", replay on {}", replay.join(", ")) },
        );
        sim.run_until_ctrl_c().await.map_err(|e| error(e.to_string()))
    })
}
