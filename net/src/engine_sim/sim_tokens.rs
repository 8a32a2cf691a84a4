//! The simulator's tokenizer and output text: no model files, deterministic, and shared
//! prefixes of text stay shared prefixes of tokens (so prefix caching behaves).
//!
//! - Text to tokens: one token per UTF-8 byte, the byte's value as its id (ids 0..=255).
//! - Chat messages to text: each message as `<|role|>\n` + its text + `\n`, then
//!   `<|assistant|>\n` (the generation prompt); a message's content is a string or a list
//!   of parts whose `text` parts are joined.
//! - Output: token `k` of a response is the word `WORDS[k % WORDS.len()]` with a leading
//!   space, id `256 + k % WORDS.len()`.
//!
//! A router in front of the simulator that tokenizes for itself must do the same to find
//! the simulator's cached prefixes; `POST /tokenize` gives the simulator's own token ids.

/// The words output tokens cycle through.
const WORDS: [&str; 8] = ["the", "cache", "holds", "a", "prefix", "of", "every", "prompt"];

/// The token ids of `text`.
pub fn text_tokens(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// One chat message: role and text (the parts of a multi-part content already joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatTurn {
    pub role: String,
    pub text: String,
}

/// The prompt text of a conversation, generation prompt included.
pub fn chat_prompt(turns: &[ChatTurn]) -> String {
    let mut prompt = String::new();
    for turn in turns {
        prompt.push_str("<|");
        prompt.push_str(&turn.role);
        prompt.push_str("|>\n");
        prompt.push_str(&turn.text);
        prompt.push('\n');
    }
    prompt.push_str("<|assistant|>\n");
    prompt
}

/// Text of output token `index`.
pub fn output_text(index: u32) -> String {
    format!(" {}", WORDS[index as usize % WORDS.len()])
}

/// Id of output token `index`.
pub fn output_id(index: u32) -> u32 {
    256 + index % WORDS.len() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_shares_prefixes_as_bytes() {
        assert_eq!(text_tokens("ab"), [97, 98]);
        assert_eq!(text_tokens("é"), [0xc3, 0xa9]);
        let turns = |last: &str| {
            vec![
                ChatTurn { role: "system".into(), text: "be brief".into() },
                ChatTurn { role: "user".into(), text: last.into() },
            ]
        };
        let (a, b) = (text_tokens(&chat_prompt(&turns("one"))), text_tokens(&chat_prompt(&turns("two"))));
        assert_eq!(chat_prompt(&turns("one")), "<|system|>\nbe brief\n<|user|>\none\n<|assistant|>\n");
        let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert_eq!(shared, "<|system|>\nbe brief\n<|user|>\n".len());
        assert_eq!((output_text(0), output_text(9), output_id(9)), (" the".to_owned(), " cache".to_owned(), 257));
    }
}
