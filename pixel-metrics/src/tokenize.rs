//! Caption tokenization as pycocoevalcap's `PTBTokenizer` does it.
//!
//! pycocoevalcap runs Stanford CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase` in java and
//! then drops the tokens in [`PUNCTUATIONS`]. This is a re-implementation of the behaviour that
//! matters for ordinary English captions (checked against the jar by
//! `tools/make_metric_fixtures.py`):
//!
//! - lower-casing;
//! - punctuation split off words: `. , ; : ? ! ( ) [ ] { } " ' ``` `` `;
//! - clitics split: `don't` -> `do n't`, `it's` -> `it 's`, `dogs'` -> `dogs '`, `i'm`, `'ll`,
//!   `'re`, `'ve`, `'d`, and the PTB specials `won't` -> `wo n't`, `can't` -> `ca n't`,
//!   `cannot` -> `can not`, `gonna` -> `gon na`, `gotta`, `wanna`;
//! - brackets become `-lrb-`, `-rrb-`, `-lsb-`, ... Because of `-lowerCase` these are lower-case
//!   and pycocoevalcap's list (which has `-LRB-`) does **not** remove them; we keep them too;
//! - runs of `!`/`?` (`!!`, `?!`) stay one token (and are not in the removal list either);
//! - decades keep their apostrophe (`'90s`), `rock'n'roll` -> `rock 'n' roll`, a closing quote
//!   after a clitic splits (`dog's'` -> `dog 's '`), leading `-`, `/`, `.` split off words;
//! - `$`, `%`, `#` split from numbers; `1,000`, `3.5`, `10:30`, `and/or`, `1/2`,
//!   `black-and-white` stay whole, a trailing slash splits (`w/` -> `w /`);
//! - abbreviations keep their period (`mr.`, `u.s.`, `e.g.`, `etc.`, single letters `a.`).
//!
//! Inputs outside that (URLs, emoticons, non-ASCII punctuation) may tokenize differently from
//! the jar; metric values are still computed on whatever tokens come out.

/// Tokens pycocoevalcap removes after PTB tokenization (`ptbtokenizer.py`, `PUNCTUATIONS`).
pub const PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Abbreviations that keep their trailing period (a subset of CoreNLP's PTBLexer list that
/// occurs in captions).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "inc", "ltd", "co", "corp", "mt",
    "ft", "ave", "blvd", "gen", "col", "lt", "sgt", "capt", "gov", "sen", "rep", "rev", "messrs",
    "jan", "vol", "dept", "est", "approx",
];

/// Tokenizes one caption and removes punctuation exactly as pycocoevalcap's `PTBTokenizer`
/// would for ordinary English; returns the tokens joined by single spaces.
pub fn ptb_tokenize(text: &str) -> String {
    ptb_tokens(text)
        .into_iter()
        .filter(|t| !PUNCTUATIONS.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// PTB tokens of `text`, lower-cased, before punctuation removal.
pub fn ptb_tokens(text: &str) -> Vec<String> {
    let lower = text.replace('\n', " ").to_lowercase();
    let mut out = Vec::new();
    for chunk in lower.split_whitespace() {
        split_chunk(chunk, &mut out);
    }
    out
}

fn bracket(c: char) -> Option<&'static str> {
    Some(match c {
        '(' => "-lrb-",
        ')' => "-rrb-",
        '[' => "-lsb-",
        ']' => "-rsb-",
        '{' => "-lcb-",
        '}' => "-rcb-",
        _ => return None,
    })
}

fn split_chunk(chunk: &str, out: &mut Vec<String>) {
    let chars: Vec<char> = chunk.chars().collect();
    let mut i = 0;
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            finish_word(std::mem::take(word), out);
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev = if i > 0 { Some(chars[i - 1]) } else { None };
        if let Some(b) = bracket(c) {
            flush(&mut word, out);
            out.push(b.to_string());
            i += 1;
        } else if c == '"' {
            // Opening quote at the start of a chunk or after a bracket, closing otherwise.
            let opening = prev.is_none_or(|p| bracket(p).is_some());
            flush(&mut word, out);
            out.push(if opening { "``" } else { "''" }.to_string());
            i += 1;
        } else if c == '`' {
            flush(&mut word, out);
            if next == Some('`') {
                out.push("``".into());
                i += 2;
            } else {
                out.push("`".into());
                i += 1;
            }
        } else if c == '\'' && word.is_empty() && is_decade(&chars[i + 1..]) {
            // '90s stays whole.
            word.push(c);
            i += 1;
        } else if c == '\'' && word.is_empty() {
            // Leading apostrophe: a quote, or a clitic-only chunk like "'s".
            if next == Some('\'') {
                out.push("''".into());
                i += 2;
            } else {
                let rest: String = chars[i..].iter().collect();
                if let Some(cl) = ["'s", "'m", "'d", "'ll", "'re", "'ve"]
                    .iter()
                    .find(|cl| rest == **cl)
                {
                    out.push((*cl).to_string());
                    return;
                }
                out.push("'".into());
                i += 1;
            }
        } else if c == '!' || c == '?' {
            flush(&mut word, out);
            let mut j = i;
            while j < chars.len() && (chars[j] == '!' || chars[j] == '?') {
                j += 1;
            }
            out.push(chars[i..j].iter().collect());
            i = j;
        } else if c == '\''
            && next == Some('n')
            && chars.get(i + 2) == Some(&'\'')
            && !word.is_empty()
        {
            // rock'n'roll -> rock 'n' roll
            flush(&mut word, out);
            out.push("'n'".into());
            i += 3;
        } else if (c == '/' && word.is_empty() && next.is_some())
            || (c == '.' && word.is_empty() && next.is_some_and(|n| n.is_alphabetic()))
        {
            // A leading slash or period is split off ("/a", ".can't").
            out.push(c.to_string());
            i += 1;
        } else if c == ';' || c == '&' || c == '$' || c == '%' || c == '#' {
            flush(&mut word, out);
            out.push(c.to_string());
            i += 1;
        } else if c == ':' {
            // 10:30 stays whole.
            if word.chars().last().is_some_and(|p| p.is_ascii_digit())
                && next.is_some_and(|n| n.is_ascii_digit())
            {
                word.push(c);
            } else {
                flush(&mut word, out);
                out.push(":".into());
            }
            i += 1;
        } else if c == ',' {
            if word.chars().last().is_some_and(|p| p.is_ascii_digit())
                && next.is_some_and(|n| n.is_ascii_digit())
            {
                word.push(c);
            } else {
                flush(&mut word, out);
                out.push(",".into());
            }
            i += 1;
        } else if c == '-' && next == Some('-') {
            flush(&mut word, out);
            let mut j = i;
            while j < chars.len() && chars[j] == '-' {
                j += 1;
            }
            out.push(chars[i..j].iter().collect());
            i = j;
        } else if c == '-' && word.is_empty() && !next.is_some_and(|n| n.is_ascii_digit()) {
            out.push("-".into());
            i += 1;
        } else if c == '.' && next == Some('.') {
            let mut j = i;
            while j < chars.len() && chars[j] == '.' {
                j += 1;
            }
            // "mr...." is the abbreviation "mr." followed by an ellipsis, "st.." by a period.
            let mut start = i;
            if (j - i == 2 || j - i == 4) && is_abbreviation(&word) {
                word.push('.');
                start += 1;
            }
            flush(&mut word, out);
            out.push(chars[start..j].iter().collect());
            i = j;
        } else {
            word.push(c);
            i += 1;
        }
    }
    flush(&mut word, out);
}

/// Splits trailing punctuation (periods, apostrophes, hyphens) and clitics off one word.
fn finish_word(mut word: String, out: &mut Vec<String>) {
    let mut trailing: Vec<String> = Vec::new();
    loop {
        if word.ends_with('.') && word.len() > 1 {
            let stem = &word[..word.len() - 1];
            if is_abbreviation(stem) {
                break;
            }
            word.pop();
            trailing.push(".".into());
        } else if word == "." {
            trailing.push(".".into());
            word.clear();
            break;
        } else if word.len() > 1 && word.ends_with('\'') && word[..word.len() - 1].contains('\'') {
            // Closing quote after a clitic: "dog's'" -> "dog 's '".
            word.pop();
            trailing.push("'".into());
        } else if word.ends_with("''") {
            word.truncate(word.len() - 2);
            trailing.push("''".into());
        } else if word.ends_with('-') && word.len() > 1 {
            word.pop();
            trailing.push("-".into());
        } else if word.ends_with('/') && word.len() > 1 {
            word.pop();
            trailing.push("/".into());
        } else {
            break;
        }
    }
    // Clitics.
    let mut clitic: Option<String> = None;
    for cl in ["n't", "'s", "'m", "'d", "'ll", "'re", "'ve"] {
        if word.len() > cl.len() && word.ends_with(cl) {
            clitic = Some(cl.to_string());
            word.truncate(word.len() - cl.len());
            break;
        }
    }
    if clitic.is_none() && word.len() > 1 && word.ends_with('\'') {
        word.pop();
        clitic = Some("'".into());
    }
    match (word.as_str(), clitic.as_deref()) {
        ("wo", Some("n't")) | ("ca", Some("n't")) => {}
        ("cannot", None) => {
            word = "can".into();
            clitic = Some("not".into());
        }
        ("gonna", None) | ("gotta", None) | ("wanna", None) => {
            let stem = word[..3].to_string();
            clitic = Some(word[3..].to_string());
            word = stem;
        }
        _ => {}
    }
    if !word.is_empty() {
        out.push(word);
    }
    if let Some(cl) = clitic {
        out.push(cl);
    }
    out.extend(trailing.into_iter().rev());
}

/// `90s`, `80s`: what follows the apostrophe of a decade like `'90s`.
fn is_decade(rest: &[char]) -> bool {
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    digits == 2 && rest.get(2) == Some(&'s') && rest.get(3).is_none_or(|c| !c.is_alphanumeric())
}

fn is_abbreviation(stem: &str) -> bool {
    if stem.is_empty() {
        return false;
    }
    // Single letters ("a.") and dotted initialisms ("u.s", "e.g", "p.m").
    let letters_and_dots = stem.chars().all(|c| c.is_alphabetic() || c == '.');
    if letters_and_dots && stem.chars().count() == 1 {
        return true;
    }
    if letters_and_dots && stem.contains('.') {
        return true;
    }
    ABBREVIATIONS.contains(&stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_corenlp_on_common_cases() {
        // Expected outputs are the CoreNLP 3.4.1 jar's (see module docs).
        let cases = [
            (
                "A man (wearing a hat) rides a horse.",
                "a man -lrb- wearing a hat -rrb- rides a horse .",
            ),
            (
                "Don't stop; it's the cat's toy, isn't it?",
                "do n't stop ; it 's the cat 's toy , is n't it ?",
            ),
            (
                "The dogs' bowls are \"full\" of food!!",
                "the dogs ' bowls are `` full '' of food !!",
            ),
            (
                "Mr. Smith and Dr. Who in the U.S. at 3.5 p.m. cost $5 or 50% and/or more...",
                "mr. smith and dr. who in the u.s. at 3.5 p.m. cost $ 5 or 50 % and/or more ...",
            ),
            (
                "A black-and-white photo -- of a 1,000 cats: a,b & c [really] {yes}",
                "a black-and-white photo -- of a 1,000 cats : a , b & c -lsb- really -rsb- -lcb- yes -rcb-",
            ),
            (
                "I'm sure they'll go, we've seen you'd won't can't cannot gonna",
                "i 'm sure they 'll go , we 've seen you 'd wo n't ca n't can not gon na",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(ptb_tokens(input).join(" "), expected, "input: {input}");
        }
    }

    #[test]
    fn removes_pycocoevalcap_punctuation_but_keeps_lowercase_brackets() {
        assert_eq!(
            ptb_tokenize("A man (wearing a hat) rides a horse."),
            "a man -lrb- wearing a hat -rrb- rides a horse"
        );
        assert_eq!(
            ptb_tokenize("Wow!! A dog, running."),
            "wow !! a dog running"
        );
    }
}
