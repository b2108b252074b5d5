//! Generated tokens as text: the final text of a reply ([`reply_text`]) and the text as it
//! grows, token by token ([`TextStream`]), for streaming output and stop strings.

use std::io::Write;

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// The text of newly generated `tokens`: `eos` ids dropped, cut before the first stop string.
pub fn reply_text(tok: &Tokenizer, eos: &[u32], tokens: &[u32], stop: &[String]) -> Result<String> {
    let kept: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|t| !eos.contains(t))
        .collect();
    let mut text = tok.decode(&kept)?;
    if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
    }
    Ok(text)
}

/// Follows generated text as it completes: a token that ends inside a multi-byte character
/// waits for the next; EOS ids are not shown; text that may still grow into a stop string is
/// held back. The first write error is kept for the caller.
///
/// Each token costs the decoding of a few tokens, not of the whole reply: a window from the
/// token before the last complete piece is decoded, and its text past that token's is the new
/// text (as text-generation-inference's `decode_token`), so decoders that strip a leading space
/// or fuse byte tokens see the same neighbours as in one decoding of the whole reply.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    eos: &'a [u32],
    stop: Vec<String>,
    /// Write the text out as it comes (human mode), or only watch for stop strings.
    show: bool,
    tokens: Vec<u32>,
    /// The window: its text starts at token `prefix`; tokens from `read` on are not yet
    /// complete text.
    prefix: usize,
    read: usize,
    /// The text of all tokens, as one decoding of them gives it; its first `done` bytes are
    /// the text of `tokens[..read]`, which later tokens leave as it is.
    text: String,
    done: usize,
    shown: usize,
    /// The stop string that ended the text, if one did.
    pub hit: Option<String>,
    error: Option<std::io::Error>,
}

impl<'a> TextStream<'a> {
    pub fn new(tok: &'a Tokenizer, eos: &'a [u32], stop: &[String], show: bool) -> Self {
        TextStream {
            tok,
            eos,
            stop: stop.to_vec(),
            show,
            tokens: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            done: 0,
            shown: 0,
            hit: None,
            error: None,
        }
    }

    /// Takes the next token; false once the text holds a stop string.
    pub fn push(&mut self, tok: u32, out: &mut impl Write) -> bool {
        if self.eos.contains(&tok) {
            return true;
        }
        self.tokens.push(tok);
        let Ok(before) = self.extend() else {
            return true;
        };
        // The text up to `before` held no stop string: a new one ends past it.
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let mut from = before.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let tail = &self.text[from..];
        let first = self
            .stop
            .iter()
            .filter_map(|s| tail.find(s.as_str()).map(|i| (from + i, s)));
        if let Some((cut, s)) = first.min() {
            self.hit = Some(s.clone());
            self.write(cut, out);
            return false;
        }
        let text = &self.text;
        let hold = self.stop.iter().map(|s| s.len().saturating_sub(1)).max();
        let mut end = text
            .trim_end_matches('\u{FFFD}')
            .len()
            .min(text.len() - hold.unwrap_or(0).min(text.len()));
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.write(end, out);
        true
    }

    /// Brings `text` up to the last token: the window's text past its first complete piece
    /// replaces what stood after `done`; a window that ends in a whole character moves on.
    /// Returns how many bytes at the start of `text` stayed as they were.
    fn extend(&mut self) -> Result<usize> {
        let before = self.done;
        let window = self.tok.decode(&self.tokens[self.prefix..])?;
        let known = self.tok.decode(&self.tokens[self.prefix..self.read])?;
        self.text.truncate(self.done);
        match window.strip_prefix(known.as_str()) {
            Some(new) => self.text.push_str(new),
            None => {
                // A decoder whose window text does not extend its start: decode it all.
                self.text = self.tok.decode(&self.tokens)?;
                self.done = 0;
                (self.prefix, self.read) = (0, 0);
                return Ok(0);
            }
        }
        if window.len() > known.len() && !window.ends_with('\u{FFFD}') {
            self.done = self.text.len();
            (self.prefix, self.read) = (self.read, self.tokens.len());
        }
        Ok(before)
    }

    fn write(&mut self, end: usize, out: &mut impl Write) {
        let text = &self.text;
        if self.show
            && self.error.is_none()
            && end > self.shown
            && text.is_char_boundary(self.shown)
        {
            let piece = &text.as_bytes()[self.shown..end];
            self.error = out.write_all(piece).and_then(|_| out.flush()).err();
            self.shown = end;
        }
    }

    /// Writes what was held back of the final `text`; the first write error, if any.
    pub fn finish(mut self, text: &str, out: &mut impl Write) -> std::io::Result<()> {
        if text.len() > self.shown {
            self.text = text.to_string();
            self.write(text.len(), out);
        }
        self.error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-level BPE splits multi-byte characters across tokens: the streamed bytes equal one
    /// decoding of all tokens, and every stop string ends the text where a full decoding finds it.
    #[test]
    fn streamed_text_equals_one_decoding_of_the_reply() {
        let corpus = "héllo wörld — naïve café ☕ 日本語 ok. ".repeat(20);
        let tok = Tokenizer::train_bpe(&[corpus.as_str()], 300).unwrap();
        let ids = tok
            .encode("naïve ☕ café 日本語 wörld — héllo ok. 日本")
            .unwrap();
        let full = tok.decode(&ids).unwrap();
        for stop in [
            vec![],
            vec!["café".to_string()],
            vec!["本語 w".into(), "xyz".into()],
        ] {
            let mut out = Vec::new();
            let mut s = TextStream::new(&tok, &[], &stop, true);
            let mut n = 0;
            for &t in &ids {
                n += 1;
                if !s.push(t, &mut out) {
                    break;
                }
            }
            let text = reply_text(&tok, &[], &ids[..n], &stop).unwrap();
            s.finish(&text, &mut out).unwrap();
            let cut = stop.iter().filter_map(|x| full.find(x.as_str())).min();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                full[..cut.unwrap_or(full.len())]
            );
        }
    }
}
