//! Which LoRA adapter a proxied request runs under, so that the router hashes its blocks as
//! the engine does (an adapter's blocks are its own; a plain request gets none of them).
//!
//! - SGLang names the adapter in the body: `lora_path`.
//! - vLLM serves each adapter as a model of its own: the request's `model` is the adapter's
//!   name. The proxy tells adapters from base models by the engines' `GET /v1/models`, where
//!   vLLM lists an adapter with its base model as `parent`. The list is fetched from a
//!   healthy upstream when first needed and again when it is older than [`REFRESH`], or when a
//!   request names a model it has not seen and the list is older than [`RECHECK`] (an adapter
//!   loaded at run time); a model the list does not name as an adapter is a base model.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Age at which the adapter list is fetched again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Age past which an unknown model name triggers a fetch.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The upstreams' model names, as last fetched.
#[derive(Default)]
pub struct LoraNames {
    known: Mutex<Option<KnownModels>>,
}

struct KnownModels {
    fetched: Instant,
    adapters: HashSet<String>,
    models: HashSet<String>,
}

/// What the proxy must do before it can answer [`LoraNames::adapter_of`].
pub enum Lookup {
    /// The answer: the request's adapter, if any.
    Known(Option<String>),
    /// Fetch `/v1/models` and [`LoraNames::store`] it first.
    Fetch,
}

impl LoraNames {
    /// The adapter `body` runs under, or that the list must be fetched first.
    pub fn adapter_of(&self, body: &Value, now: Instant) -> Lookup {
        if let Some(path) = body.get("lora_path").and_then(Value::as_str).filter(|path| !path.is_empty()) {
            return Lookup::Known(Some(path.to_owned()));
        }
        let Some(model) = body.get("model").and_then(Value::as_str) else {
            return Lookup::Known(None);
        };
        let known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*known {
            Some(list)
                if now.duration_since(list.fetched) < REFRESH
                    && (list.models.contains(model) || now.duration_since(list.fetched) < RECHECK) =>
            {
                Lookup::Known(list.adapters.contains(model).then(|| model.to_owned()))
            }
            _ => Lookup::Fetch,
        }
    }

    /// Stores a `/v1/models` answer fetched at `now` (`None`: the fetch failed; the empty
    /// list then stands until the next recheck, so requests route as base-model ones).
    pub fn store(&self, answer: Option<&Value>, now: Instant) {
        let mut adapters = HashSet::new();
        let mut models = HashSet::new();
        for entry in answer.and_then(|a| a.get("data")).and_then(Value::as_array).into_iter().flatten() {
            let Some(id) = entry.get("id").and_then(Value::as_str) else { continue };
            models.insert(id.to_owned());
            if entry.get("parent").is_some_and(|parent| parent.is_string()) {
                adapters.insert(id.to_owned());
            }
        }
        *self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(KnownModels { fetched: now, adapters, models });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known(lookup: Lookup) -> Option<String> {
        match lookup {
            Lookup::Known(adapter) => adapter,
            Lookup::Fetch => panic!("expected an answer"),
        }
    }

    #[test]
    fn adapters_come_from_the_body_or_the_model_list() {
        let names = LoraNames::default();
        let t0 = Instant::now();
        assert_eq!(known(names.adapter_of(&json!({"lora_path": "a", "model": "m"}), t0)), Some("a".to_owned()));
        assert_eq!(known(names.adapter_of(&json!({"prompt": [1]}), t0)), None);
        assert!(matches!(names.adapter_of(&json!({"model": "base"}), t0), Lookup::Fetch));
        let list = json!({"data": [{"id": "base", "parent": null}, {"id": "sql-lora", "parent": "base"}]});
        names.store(Some(&list), t0);
        assert_eq!(known(names.adapter_of(&json!({"model": "sql-lora"}), t0)), Some("sql-lora".to_owned()));
        assert_eq!(known(names.adapter_of(&json!({"model": "base"}), t0)), None);
        // An unknown name: taken as a base model until the list is a second old, then rechecked.
        assert_eq!(known(names.adapter_of(&json!({"model": "new-lora"}), t0)), None);
        assert!(matches!(names.adapter_of(&json!({"model": "new-lora"}), t0 + RECHECK), Lookup::Fetch));
        assert_eq!(known(names.adapter_of(&json!({"model": "base"}), t0 + RECHECK)), None);
        assert!(matches!(names.adapter_of(&json!({"model": "base"}), t0 + REFRESH), Lookup::Fetch));
        names.store(None, t0 + REFRESH);
        assert_eq!(known(names.adapter_of(&json!({"model": "sql-lora"}), t0 + REFRESH)), None);
    }
}
