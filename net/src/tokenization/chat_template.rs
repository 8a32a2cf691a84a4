//! A model's chat template: the Jinja source from its `tokenizer_config.json` (or a
//! `.jinja` file), rendered with minijinja the way transformers' `apply_chat_template`
//! renders it, so that the router's prompt text is byte for byte the engine's.
//!
//! What transformers sets up, and this does too:
//! - `trim_blocks` and `lstrip_blocks` on, loop controls (`break`, `continue`) on;
//! - Python string and dict methods (`.strip()`, `.startswith()`, `.items()`, ...) through
//!   minijinja-contrib's pycompat;
//! - `raise_exception(message)`, which fails the render (the request is then a 400, as in
//!   vLLM), and `strftime_now(format)` (UTC; `%d %m %Y %y %b %B %H %M %S %%`);
//! - variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools`, and
//!   the request's `chat_template_kwargs`.

use std::fmt;

use minijinja::{Environment, Error, ErrorKind, Value};

/// The name the template is kept under in its environment.
const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate").field("bos_token", &self.bos_token).field("eos_token", &self.eos_token).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported with its line.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|error| error.to_string())?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| -> Result<Value, Error> {
            strftime(&format, time::OffsetDateTime::now_utc()).map(Value::from)
        });
        env.add_template_owned(TEMPLATE_NAME, source).map_err(|error| format!("the chat template: {error:#}"))?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    /// The prompt text for `messages` (each one's `content` already a string).
    pub fn render(
        &self,
        messages: serde_json::Value,
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String, String> {
        let mut context = serde_json::Map::new();
        if let Some(kwargs) = kwargs {
            context.extend(kwargs.iter().map(|(key, value)| (key.clone(), value.clone())));
        }
        context.insert("messages".into(), messages);
        context.insert("add_generation_prompt".into(), add_generation_prompt.into());
        context.insert("bos_token".into(), self.bos_token.clone().into());
        context.insert("eos_token".into(), self.eos_token.clone().into());
        if let Some(tools) = tools {
            context.insert("tools".into(), tools.clone());
        }
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|error| error.to_string())?;
        template.render(Value::from(minijinja::value::Serde(&context))).map_err(|error| match error.kind() {
            ErrorKind::InvalidOperation => {
                format!("the chat template refused the messages: {}", error.detail().unwrap_or(""))
            }
            _ => format!("rendering the chat template: {error:#}"),
        })
    }
}

/// Python's `strftime` for the specifiers chat templates use.
fn strftime(format: &str, now: time::OffsetDateTime) -> Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[usize::from(u8::from(now.month())) - 1];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{:02}", now.day())),
            Some('m') => out.push_str(&format!("{:02}", u8::from(now.month()))),
            Some('Y') => out.push_str(&now.year().to_string()),
            Some('y') => out.push_str(&format!("{:02}", now.year() % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", now.hour())),
            Some('M') => out.push_str(&format!("{:02}", now.minute())),
            Some('S') => out.push_str(&format!("{:02}", now.second())),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: %{} is not supported", other.map(String::from).unwrap_or_default()),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_as_transformers_with_python_methods_and_block_trimming() {
        let source = "{{ bos_token }}\n{% for m in messages %}\n  {% if loop.first and m.role != 'system' %}[no system]{% endif %}\n<{{ m.role }}>{{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}<assistant>{% endif %}{{ extra | default('') }}";
        let template = ChatTemplate::new(source.into(), "<s>".into(), "</s>".into()).unwrap();
        let messages = json!([{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]);
        assert_eq!(
            template.render(messages.clone(), true, None, None).unwrap(),
            "<s>\n[no system]<user>hi</s>\n<assistant>yo</s>\n<assistant>"
        );
        let kwargs = json!({"extra": "!"}).as_object().cloned();
        assert_eq!(
            template.render(messages.clone(), false, None, kwargs.as_ref()).unwrap(),
            "<s>\n[no system]<user>hi</s>\n<assistant>yo</s>\n!"
        );
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_errors() {
        let strict = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok".into(),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(strict.render(json!([{"role": "user", "content": ""}]), true, None, None).unwrap(), "ok");
        let refused = strict.render(json!([{"role": "bot", "content": ""}]), true, None, None).unwrap_err();
        assert!(refused.contains("first must be user"), "{refused}");
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }

    #[test]
    fn strftime_covers_the_template_specifiers() {
        let at = time::Date::from_calendar_date(2024, time::Month::July, 26)
            .unwrap()
            .with_hms(9, 5, 3)
            .unwrap()
            .assume_utc();
        assert_eq!(strftime("%d %b %Y", at).unwrap(), "26 Jul 2024");
        assert_eq!(strftime("%B %m/%y %H:%M:%S %%", at).unwrap(), "July 07/24 09:05:03 %");
        assert!(strftime("%Q", at).is_err());
    }
}
