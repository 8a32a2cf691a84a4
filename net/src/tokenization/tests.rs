use std::path::Path;

use serde_json::json;

use super::*;

/// A word-level `tokenizer.json` whose post-processor puts `<s>` first, as Llama's does.
fn write_word_tokenizer(dir: &Path) -> PathBuf {
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "<unk>",
            "vocab": {"<s>": 0, "<unk>": 1, "hello": 2, "world": 3, "<|": 4, "|>": 5, "user": 6, "assistant": 7, "system": 8}},
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    path
}

const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

#[test]
fn a_model_directory_gives_its_tokenizer_template_and_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    write_word_tokenizer(dir.path());
    let config =
        json!({"bos_token": {"content": "<s>", "special": true}, "eos_token": "</s>", "chat_template": TEMPLATE});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let tokenizer = PromptTokenizer::load(&TokenizerSource::File(dir.path().to_owned()), None).unwrap();
    assert_eq!(tokenizer.encode_prompt("hello world").unwrap(), [0, 2, 3], "completions get the BOS");
    let chat = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]});
    assert_eq!(tokenizer.encode_chat(&chat).unwrap(), [0, 4, 6, 5, 2, 4, 7, 5], "one BOS, from the template");
    let no_prompt = json!({"messages": [{"role": "user", "content": "hello"}], "add_generation_prompt": false});
    assert_eq!(tokenizer.encode_chat(&no_prompt).unwrap(), [0, 4, 6, 5, 2]);
    for bad in [json!({"messages": []}), json!({"messages": [{"role": "user"}], "add_generation_prompt": 1})] {
        assert!(tokenizer.encode_chat(&bad).is_err(), "{bad}");
    }
}

#[test]
fn the_template_comes_from_the_flag_then_the_jinja_file_then_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_word_tokenizer(dir.path());
    let chat = json!({"messages": [{"role": "system", "content": "world"}]});
    let named =
        json!({"chat_template": [{"name": "tool_use", "template": "hello"}, {"name": "default", "template": "world"}]});
    std::fs::write(dir.path().join("tokenizer_config.json"), named.to_string()).unwrap();
    let from_config = PromptTokenizer::load(&TokenizerSource::File(file.clone()), None).unwrap();
    assert_eq!(from_config.encode_chat(&chat).unwrap(), [3], "the template named default");
    std::fs::write(dir.path().join("chat_template.jinja"), "{{ messages[0].role }}").unwrap();
    let from_jinja = PromptTokenizer::load(&TokenizerSource::File(file.clone()), None).unwrap();
    assert_eq!(from_jinja.encode_chat(&chat).unwrap(), [8]);
    let flag = dir.path().join("override.jinja");
    std::fs::write(&flag, "hello {{ messages[0].content }}").unwrap();
    let from_flag = PromptTokenizer::load(&TokenizerSource::File(file), Some(&flag)).unwrap();
    assert_eq!(from_flag.encode_chat(&chat).unwrap(), [2, 3]);
}

#[test]
fn no_template_refuses_chat_only_and_bad_files_fail_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_word_tokenizer(dir.path());
    let plain = PromptTokenizer::load(&TokenizerSource::File(file), None).unwrap();
    assert_eq!(plain.encode_prompt("world").unwrap(), [0, 3]);
    let refused = plain.encode_chat(&json!({"messages": [{"role": "user", "content": "x"}]})).unwrap_err();
    assert!(refused.contains("--chat-template"), "{refused}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"model\": 3}").unwrap();
    assert!(PromptTokenizer::load(&TokenizerSource::File(broken), None).is_err());
    assert!(PromptTokenizer::load(&TokenizerSource::File(dir.path().join("missing.json")), None).is_err());
    let bad_template = dir.path().join("bad.jinja");
    std::fs::write(&bad_template, "{% if %}").unwrap();
    assert!(PromptTokenizer::load(&TokenizerSource::Bytes, Some(&bad_template)).is_err());
    assert_eq!("bytes".parse(), Ok(TokenizerSource::Bytes));
    assert!("".parse::<TokenizerSource>().is_err());
}

#[test]
fn bytes_is_the_simulators_format() {
    let bytes = PromptTokenizer::bytes();
    assert_eq!(bytes.encode_prompt("é").unwrap(), [0xc3, 0xa9]);
    let chat = json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"}]});
    let expected = "<|system|>\nbe brief\n<|user|>\none\n<|assistant|>\n";
    assert_eq!(bytes.encode_chat(&chat).unwrap(), expected.bytes().map(u32::from).collect::<Vec<_>>());
    let loaded = PromptTokenizer::load(&TokenizerSource::Bytes, None).unwrap();
    assert_eq!(loaded.encode_chat(&chat).unwrap(), bytes.encode_chat(&chat).unwrap());
}
