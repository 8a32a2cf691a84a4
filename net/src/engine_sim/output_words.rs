//! What the simulator generates: output token `k` of a response is the word
//! `WORDS[k % WORDS.len()]` with a leading space, id `256 + k % WORDS.len()`. Deterministic,
//! so tests can check a whole answer. (Prompts are tokenized by [`crate::tokenization`].)

/// The words output tokens cycle through.
const WORDS: [&str; 8] = ["the", "cache", "holds", "a", "prefix", "of", "every", "prompt"];

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
    fn output_cycles_through_the_words() {
        assert_eq!((output_text(0), output_text(9), output_id(9)), (" the".to_owned(), " cache".to_owned(), 257));
    }
}
