//! A stand-in for a model's tokenizer files, for tests and benches that tokenize text the
//! way a real deployment does (this machine cannot download a model): a byte-level BPE
//! `tokenizer.json` (GPT-2 / Llama 3 style: byte-level pre-tokenizer and decoder, special
//! tokens as added tokens, a BOS from the post-processor), trained here with the
//! `tokenizers` crate on sentences of [`WORDS`], and a `tokenizer_config.json` with a Llama
//! 3 shaped chat template and its special tokens.
//!
//! The vocabulary (2,048 entries) is far smaller than a real model's (128 K for Llama 3),
//! so encoding costs somewhat less per token than with a real one.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, TokenizerBuilder};

use crate::rng::Rng;

/// The words sentences are made of (training corpus and [`sentence_text`]).
pub const WORDS: [&str; 32] = [
    "the", "cache", "holds", "a", "prefix", "of", "every", "prompt", "router", "sends", "request", "to", "worker",
    "rank", "that", "already", "has", "its", "blocks", "and", "decode", "prefill", "token", "stream", "model",
    "answer", "fast", "engine", "event", "index", "tree", "hash",
];

pub const BOS: &str = "<|begin_of_text|>";
const SPECIAL: [&str; 4] = [BOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];

/// A Llama 3 shaped chat template.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// `words` words of text from `rng`, space-separated.
pub fn sentence_text(rng: &mut Rng, words: usize) -> String {
    let mut text = String::new();
    for i in 0..words {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    text
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (a model directory, as
/// `--tokenizer DIR` reads it).
pub fn write_model_dir(dir: &Path) -> Result<(), String> {
    let specials: Vec<AddedToken> = SPECIAL.iter().map(|token| AddedToken::from(*token, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(2_048)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .and_then(|builder| builder.try_pair(format!("{BOS} $A $B")))
        .map_err(|error| error.to_string())?
        .special_tokens(vec![(BOS, 0)])
        .build()
        .map_err(|error| error.to_string())?;
    let mut tokenizer = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<NormalizerWrapper>)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(post))
        .with_decoder(Some(ByteLevel::default()))
        .build()
        .map_err(|error| error.to_string())?;
    let mut rng = Rng::new(0x70_6b_65_6e, 0);
    let corpus: Vec<String> = (0..4_000).map(|_| sentence_text(&mut rng, 12)).collect();
    tokenizer.train(&mut trainer, corpus.iter()).map_err(|error| error.to_string())?;
    let tokenizer: tokenizers::Tokenizer = tokenizer.into();
    tokenizer.save(dir.join("tokenizer.json"), false).map_err(|error| error.to_string())?;
    let config = serde_json::json!({
        "bos_token": BOS, "eos_token": "<|eot_id|>", "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvroute_net::tokenization::{PromptTokenizer, TokenizerSource};

    #[test]
    fn the_fixture_loads_as_a_model_directory_and_merges_words() {
        let dir = tempfile::tempdir().unwrap();
        write_model_dir(dir.path()).unwrap();
        let tokenizer = PromptTokenizer::load(&TokenizerSource::File(dir.path().to_owned()), None).unwrap();
        let text = sentence_text(&mut Rng::new(1, 0), 100);
        let ids = tokenizer.encode_prompt(&text).unwrap();
        assert_eq!(ids[0], 0, "the BOS first");
        assert!(ids.len() <= 101, "whole words are single tokens: {}", ids.len());
        let chat = serde_json::json!({"messages": [{"role": "user", "content": text}]});
        let chat_ids = tokenizer.encode_chat(&chat).unwrap();
        assert_eq!(chat_ids.iter().filter(|&&id| id == 0).count(), 1, "one BOS, the template's");
        assert!(chat_ids.len() > ids.len());
    }
}
