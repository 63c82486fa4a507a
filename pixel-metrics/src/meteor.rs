//! Native METEOR 1.5 (Denkowski & Lavie), following the scoring of the `meteor-1.5.jar` that
//! pycocoevalcap runs as `java -jar meteor-1.5.jar - - -stdio -l en -norm`.
//!
//! What is reproduced from the jar:
//! - matching stages in order exact, stem (Snowball English stemmer, as the jar's
//!   `englishStemmer`), WordNet synonyms (only when [`SynonymDictionary`] data is given),
//!   paraphrase (only when a paraphrase table is given, e.g. pycocoevalcap's
//!   `meteor/data/paraphrase-en.gz`);
//! - the aligner: one-to-one non-overlapping matches are fixed first, the rest is resolved by the
//!   jar's left-to-right beam search (beam 40) ranking partial alignments by weighted match
//!   count (search weights 1.0/0.5/0.5/0.5, accumulated in an `int` as the jar does), then fewer
//!   chunks, then smaller distance;
//! - statistics split by content/function words (the jar's English function-word list), module
//!   weights 1.0 0.6 0.8 0.6, parameters alpha 0.85, beta 0.20, gamma 0.60, delta 0.75, the
//!   fragmentation penalty `gamma * (chunks / mean matches)^beta` (zero for a perfect match);
//! - several references: the reference with the best score is kept (first one on ties);
//! - corpus score: statistics summed over segments, then scored (what pycocoevalcap reports).
//!
//! The WordNet synonym stage needs the jar's data ([`SynonymDictionary`], from the jar's
//! `synonym/` folder); without it, [`MeteorConfig::emulate_synonym_coverage`] reproduces its
//! main side effect on the alignment. The measured gap to the jar with and without the optional
//! data is stated in `pixel-metrics/tests/metrics_parity.rs`.

#![allow(clippy::needless_range_loop)] // index loops mirror the reference implementation

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use super::MetricsError;

/// The jar's English function words (`function/english.words` in meteor-1.5.jar).
const FUNCTION_WORDS_EN: &[&str] = &[
    "the", ",", ".", "to", "of", "and", "a", "in", "that", "for", "\"", "is", "on", "'s", "it",
    "with", "was", "as", "said", "at", "he", "by", "be", "from", "have", "has", "are", "his",
    "but", "an", "this", "not", "i", "will", "\u{2019}", "they", ")", "-rrb-", "(", "-lrb-", "who",
    "their", "had", "we", "which", "were", "been", "more", "or", "s", "its", "would", "about",
    "new", "one", "after", "you", ":", "also", "up", "when", "there", "than", "$", "all", "out",
    "her", "people", "she", "year", "two", "-", "can", "if", "last", "first", "\u{201c}", "over",
    "other", "\u{201d}", "into", "some", "what", "so", "--", "no", "time", "years", "could", "?",
    "'t", "\u{2014}", "'",
];

/// Anything that scores a candidate caption against references with METEOR. Dense-captioning
/// evaluation takes this trait so tests can inject the reference implementation's scores.
pub trait MeteorScorer {
    /// METEOR of `candidate` against `references` (best reference), in [0, 1].
    fn score(&self, candidate: &str, references: &[String]) -> Result<f64, MetricsError>;
}

/// METEOR parameters; [`MeteorConfig::default`] is the jar's `-l en` task default.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteorConfig {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    pub delta: f64,
    /// Scoring weights of the exact, stem, synonym and paraphrase stages.
    pub module_weights: [f64; 4],
    /// Beam size of the alignment search.
    pub beam_size: usize,
    /// Lower-case and split punctuation as `-norm` does.
    pub normalize: bool,
    /// Treat stem matches as ambiguous (never fixed before the beam search). In the jar the
    /// WordNet synonym stage matches nearly every stem pair again (`dogs`/`dog` share a synset
    /// through their base form), so those words are covered twice and go through the beam
    /// search, where a lone 0.5-weighted match truncates to 0 and loses to skipping when it
    /// would open a new chunk. Emulating that coverage brings the native scores much closer to
    /// the jar's.
    pub emulate_synonym_coverage: bool,
}

impl Default for MeteorConfig {
    fn default() -> Self {
        Self {
            alpha: 0.85,
            beta: 0.20,
            gamma: 0.60,
            delta: 0.75,
            module_weights: [1.0, 0.6, 0.8, 0.6],
            beam_size: 40,
            normalize: true,
            emulate_synonym_coverage: true,
        }
    }
}

const MODULE_EXACT: usize = 0;
const MODULE_STEM: usize = 1;
const MODULE_SYNONYM: usize = 2;
const MODULE_PARAPHRASE: usize = 3;
/// Weights the jar's aligner ranks partial alignments with (`MeteorScorer.loadConfiguration`).
const SEARCH_WEIGHTS: [f64; 4] = [1.0, 0.5, 0.5, 0.5];

/// A phrase table: phrase -> paraphrases (both directions are looked up, as the jar does).
#[derive(Debug, Default, Clone)]
pub struct ParaphraseTable {
    map: HashMap<Vec<String>, Vec<Vec<String>>>,
    max_len: usize,
}

impl ParaphraseTable {
    /// Reads METEOR's paraphrase format: records of three lines (probability, phrase, paraphrase),
    /// plain text or gzip (`.gz`).
    pub fn from_file(path: &Path) -> Result<Self, MetricsError> {
        let file = std::fs::File::open(path).map_err(|source| MetricsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        let mut table = ParaphraseTable::default();
        let mut lines = reader.lines().enumerate();
        while let Some((ln, prob)) = lines.next() {
            let err = |ln: usize, why: String| MetricsError::MeteorData {
                path: path.to_path_buf(),
                line: ln + 1,
                why,
            };
            let prob = prob.map_err(|e| err(ln, e.to_string()))?;
            if prob.trim().is_empty() {
                continue;
            }
            prob.trim()
                .parse::<f64>()
                .map_err(|_| err(ln, format!("expected a probability, found `{prob}`")))?;
            let (Some((l1, p1)), Some((l2, p2))) = (lines.next(), lines.next()) else {
                return Err(err(
                    ln,
                    "record cut short: expected two phrase lines".into(),
                ));
            };
            let p1 = p1.map_err(|e| err(l1, e.to_string()))?;
            let p2 = p2.map_err(|e| err(l2, e.to_string()))?;
            table.insert(&p1, &p2);
        }
        Ok(table)
    }

    /// Adds one phrase pair.
    pub fn insert(&mut self, phrase: &str, paraphrase: &str) {
        let a: Vec<String> = phrase.split_whitespace().map(str::to_string).collect();
        let b: Vec<String> = paraphrase.split_whitespace().map(str::to_string).collect();
        if a.is_empty() || b.is_empty() {
            return;
        }
        self.max_len = self.max_len.max(a.len()).max(b.len());
        self.map.entry(a).or_default().push(b);
    }
}

/// WordNet synonyms as the jar's synonym stage uses them: `english.synsets` (word line, then a
/// line of synset ids) and `english.exceptions` (base form line, then a line of irregular
/// inflections), both shipped inside `meteor-1.5.jar` under `synonym/`
/// (`unzip meteor-1.5.jar 'synonym/*'`). Two words match when their synsets, together with those
/// of their base form (irregular exceptions, else WordNet's `morphy` suffix rules), intersect.
#[derive(Debug, Default, Clone)]
pub struct SynonymDictionary {
    word_to_bases: HashMap<String, Vec<String>>,
    word_to_synsets: HashMap<String, HashSet<u32>>,
}

/// WordNet `morphy` detachment rules (nouns, verbs, adjectives), in the jar's order.
const MORPH_SUFFIXES: [(&str, &str); 20] = [
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
    ("ies", "y"),
    ("es", "e"),
    ("es", ""),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
    ("er", ""),
    ("est", ""),
    ("er", "e"),
    ("est", "e"),
];

impl SynonymDictionary {
    /// Reads `english.synsets` and `english.exceptions` from `dir` (the jar's `synonym/` folder,
    /// extracted).
    pub fn from_dir(dir: &Path) -> Result<Self, MetricsError> {
        let read = |name: &str| -> Result<(std::path::PathBuf, String), MetricsError> {
            let path = dir.join(name);
            let text = pixel_base::text::read_text(&path).map_err(|source| MetricsError::Io {
                path: path.clone(),
                source,
            })?;
            Ok((path, text))
        };
        let (ep, exceptions) = read("english.exceptions")?;
        let (sp, synsets) = read("english.synsets")?;
        Self::from_texts(&ep, &exceptions, &sp, &synsets)
    }

    /// Reads the synonym data straight out of `meteor-1.5.jar`.
    pub fn from_jar(jar: &Path) -> Result<Self, MetricsError> {
        let text = |name: &str| -> Result<String, MetricsError> {
            String::from_utf8(super::jar::read_entry(jar, name)?).map_err(|e| {
                MetricsError::MeteorData {
                    path: jar.to_path_buf(),
                    line: 0,
                    why: format!("`{name}` is not UTF-8: {e}"),
                }
            })
        };
        let p = jar.to_path_buf();
        Self::from_texts(
            &p,
            &text("synonym/english.exceptions")?,
            &p,
            &text("synonym/english.synsets")?,
        )
    }

    fn from_texts(
        exceptions_path: &Path,
        exceptions: &str,
        synsets_path: &Path,
        synsets: &str,
    ) -> Result<Self, MetricsError> {
        let pairs = |path: &Path, text: &str| -> Result<Vec<(String, String)>, MetricsError> {
            let lines: Vec<&str> = text.lines().collect();
            if !lines.len().is_multiple_of(2) {
                return Err(MetricsError::MeteorData {
                    path: path.to_path_buf(),
                    line: lines.len(),
                    why: "expected pairs of lines (a word, then its entries)".into(),
                });
            }
            Ok(lines
                .chunks(2)
                .map(|c| (c[0].to_string(), c[1].to_string()))
                .collect())
        };
        let mut d = SynonymDictionary::default();
        for (base, forms) in pairs(exceptions_path, exceptions)? {
            for f in forms.split_whitespace() {
                d.word_to_bases
                    .entry(f.to_string())
                    .or_default()
                    .push(base.clone());
            }
        }
        for (k, (word, ids)) in pairs(synsets_path, synsets)?.into_iter().enumerate() {
            let set = ids
                .split_whitespace()
                .map(|x| x.parse::<u32>())
                .collect::<Result<HashSet<u32>, _>>()
                .map_err(|e| MetricsError::MeteorData {
                    path: synsets_path.to_path_buf(),
                    line: 2 * k + 2,
                    why: format!("bad synset id: {e}"),
                })?;
            d.word_to_synsets.insert(word, set);
        }
        Ok(d)
    }

    /// WordNet `morphy` as the jar implements it (first rule whose result is a known word).
    fn morph(&self, word: &str) -> String {
        let end = if word.ends_with("ful") { "ful" } else { "" };
        if word.ends_with("ss") || word.len() <= 2 {
            return word.to_string();
        }
        for (suffix, add) in MORPH_SUFFIXES {
            if let Some(stem) = word.strip_suffix(suffix) {
                let cand = format!("{stem}{add}");
                if self.word_to_synsets.contains_key(&cand) {
                    return cand + end;
                }
            }
        }
        String::new()
    }

    /// Synsets of a word and of its base forms.
    fn synsets(&self, word: &str) -> HashSet<u32> {
        let mut out = self.word_to_synsets.get(word).cloned().unwrap_or_default();
        match self.word_to_bases.get(word) {
            Some(bases) => {
                for b in bases {
                    out.extend(self.word_to_synsets.get(b).into_iter().flatten());
                }
            }
            None => out.extend(
                self.word_to_synsets
                    .get(&self.morph(word))
                    .into_iter()
                    .flatten(),
            ),
        }
        out
    }
}

/// METEOR sufficient statistics of one segment (the jar's `MeteorStats`), summable over a corpus.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeteorStats {
    pub test_length: f64,
    pub reference_length: f64,
    pub test_function_words: f64,
    pub reference_function_words: f64,
    pub test_content_matches: [f64; 4],
    pub reference_content_matches: [f64; 4],
    pub test_function_matches: [f64; 4],
    pub reference_function_matches: [f64; 4],
    pub chunks: f64,
    pub test_word_matches: f64,
    pub reference_word_matches: f64,
}

impl MeteorStats {
    /// Adds another segment's statistics (the jar's `MeteorStats.addStats`).
    pub fn add(&mut self, o: &MeteorStats) {
        self.test_length += o.test_length;
        self.reference_length += o.reference_length;
        self.test_function_words += o.test_function_words;
        self.reference_function_words += o.reference_function_words;
        for i in 0..4 {
            self.test_content_matches[i] += o.test_content_matches[i];
            self.reference_content_matches[i] += o.reference_content_matches[i];
            self.test_function_matches[i] += o.test_function_matches[i];
            self.reference_function_matches[i] += o.reference_function_matches[i];
        }
        // The jar leaves out the chunk of a perfectly matched segment, so a corpus of perfect
        // segments has no fragmentation penalty.
        let perfect = o.test_total_matches() == o.test_length
            && o.reference_total_matches() == o.reference_length
            && o.chunks == 1.0;
        if !perfect {
            self.chunks += o.chunks;
        }
        self.test_word_matches += o.test_word_matches;
        self.reference_word_matches += o.reference_word_matches;
    }

    fn test_total_matches(&self) -> f64 {
        (0..4)
            .map(|i| self.test_content_matches[i] + self.test_function_matches[i])
            .sum()
    }

    fn reference_total_matches(&self) -> f64 {
        (0..4)
            .map(|i| self.reference_content_matches[i] + self.reference_function_matches[i])
            .sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Match {
    module: usize,
    /// Start in the reference (line 2).
    start: usize,
    length: usize,
    /// Start in the candidate (line 1).
    match_start: usize,
    match_length: usize,
}

#[derive(Debug, Clone)]
struct Partial {
    matches: Vec<Option<Match>>,
    matches1: i32,
    matches2: i32,
    chunks: i32,
    idx: usize,
    last_match_end: Option<usize>,
    distance: i32,
    used1: Vec<bool>,
    used2: Vec<bool>,
}

impl Partial {
    fn is_used(&self, m: &Match) -> bool {
        (m.start..m.start + m.length).any(|j| self.used2[j])
            || (m.match_start..m.match_start + m.match_length).any(|i| self.used1[i])
    }

    fn set_used(&mut self, m: &Match) {
        for j in m.start..m.start + m.length {
            self.used2[j] = true;
        }
        for i in m.match_start..m.match_start + m.match_length {
            self.used1[i] = true;
        }
    }

    /// `int += double` in Java truncates toward zero.
    fn add_weighted(&mut self, m: &Match) {
        let w = SEARCH_WEIGHTS[m.module];
        self.matches1 = (self.matches1 as f64 + m.match_length as f64 * w) as i32;
        self.matches2 = (self.matches2 as f64 + m.length as f64 * w) as i32;
    }

    fn extend_chunk(&mut self, m: &Match) {
        if let Some(end) = self.last_match_end {
            if m.match_start != end {
                self.chunks += 1;
            }
        }
        self.idx = m.start + m.length;
        self.last_match_end = Some(m.match_start + m.match_length);
    }
}

/// `Constants.PARTIAL_COMPARE_TOTAL`: more weighted matches, then fewer chunks, then less distance.
fn compare_partial(a: &Partial, b: &Partial) -> std::cmp::Ordering {
    let ta = a.matches1 + a.matches2;
    let tb = b.matches1 + b.matches2;
    tb.cmp(&ta)
        .then(a.chunks.cmp(&b.chunks))
        .then(a.distance.cmp(&b.distance))
}

/// The native METEOR scorer.
pub struct Meteor {
    pub config: MeteorConfig,
    function_words: HashSet<String>,
    stemmer: rust_stemmers::Stemmer,
    synonyms: Option<SynonymDictionary>,
    paraphrase: Option<ParaphraseTable>,
}

impl Default for Meteor {
    fn default() -> Self {
        Self::new(MeteorConfig::default())
    }
}

impl std::fmt::Debug for Meteor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meteor")
            .field("config", &self.config)
            .field("synonyms", &self.synonyms.is_some())
            .field("paraphrase", &self.paraphrase.is_some())
            .finish()
    }
}

impl Meteor {
    pub fn new(config: MeteorConfig) -> Self {
        Self {
            config,
            function_words: FUNCTION_WORDS_EN.iter().map(|s| s.to_string()).collect(),
            stemmer: rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English),
            synonyms: None,
            paraphrase: None,
        }
    }

    /// The jar's full `-l en` configuration from a pycocoevalcap-style install: synonyms read
    /// from `meteor-1.5.jar` and the paraphrase table `data/paraphrase-en.gz` next to it.
    /// Reproduces the jar's scores (see `pixel-metrics/tests/metrics_parity.rs`); loading the
    /// paraphrase table takes a few seconds.
    pub fn from_jar(jar: &Path) -> Result<Self, MetricsError> {
        let table_path = jar
            .parent()
            .map(|d| d.join("data").join("paraphrase-en.gz"))
            .unwrap_or_else(|| Path::new("data/paraphrase-en.gz").to_path_buf());
        Ok(Self::default()
            .with_synonyms(SynonymDictionary::from_jar(jar)?)
            .with_paraphrase(ParaphraseTable::from_file(&table_path)?))
    }

    /// Enables the synonym stage (and turns off [`MeteorConfig::emulate_synonym_coverage`],
    /// which only stands in for it).
    pub fn with_synonyms(mut self, synonyms: SynonymDictionary) -> Self {
        self.synonyms = Some(synonyms);
        self
    }

    /// Enables the paraphrase stage.
    pub fn with_paraphrase(mut self, table: ParaphraseTable) -> Self {
        self.paraphrase = Some(table);
        self
    }

    fn normalize(&self, s: &str) -> Vec<String> {
        if self.config.normalize {
            normalize_line(s)
        } else {
            s.split_whitespace().map(str::to_string).collect()
        }
    }

    /// Statistics of `candidate` against its best-scoring reference.
    pub fn segment_stats(&self, candidate: &str, references: &[String]) -> MeteorStats {
        let test = self.normalize(candidate);
        let mut best: Option<(f64, MeteorStats)> = None;
        for r in references {
            let reference = self.normalize(r);
            let stats = self.align_stats(&test, &reference);
            let score = self.score_stats(&stats);
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((score, stats));
            }
        }
        best.map(|(_, s)| s).unwrap_or_default()
    }

    /// METEOR from (possibly summed) statistics (the jar's `computeMetrics`).
    pub fn score_stats(&self, s: &MeteorStats) -> f64 {
        let c = &self.config;
        let test_wlen = c.delta * (s.test_length - s.test_function_words)
            + (1.0 - c.delta) * s.test_function_words;
        let ref_wlen = c.delta * (s.reference_length - s.reference_function_words)
            + (1.0 - c.delta) * s.reference_function_words;
        let mut test_wm = 0.0;
        let mut ref_wm = 0.0;
        for i in 0..4 {
            test_wm += s.test_content_matches[i] * c.module_weights[i] * c.delta;
        }
        for i in 0..4 {
            ref_wm += s.reference_content_matches[i] * c.module_weights[i] * c.delta;
        }
        for i in 0..4 {
            test_wm += s.test_function_matches[i] * c.module_weights[i] * (1.0 - c.delta);
        }
        for i in 0..4 {
            ref_wm += s.reference_function_matches[i] * c.module_weights[i] * (1.0 - c.delta);
        }
        let precision = test_wm / test_wlen;
        let recall = ref_wm / ref_wlen;
        let fmean = 1.0 / (((1.0 - c.alpha) / precision) + (c.alpha / recall));
        let frag = if s.test_total_matches() == s.test_length
            && s.reference_total_matches() == s.reference_length
            && s.chunks == 1.0
        {
            0.0
        } else {
            s.chunks / ((s.test_word_matches + s.reference_word_matches) / 2.0)
        };
        let penalty = c.gamma * frag.powf(c.beta);
        let score = fmean * (1.0 - penalty);
        if score.is_nan() {
            0.0
        } else {
            score.max(0.0)
        }
    }

    /// Corpus METEOR (summed statistics, as pycocoevalcap reports) and per-segment scores.
    pub fn corpus(&self, pairs: &[(String, Vec<String>)]) -> (f64, Vec<f64>) {
        let mut total = MeteorStats::default();
        let mut per = Vec::with_capacity(pairs.len());
        for (c, r) in pairs {
            let s = self.segment_stats(c, r);
            per.push(self.score_stats(&s));
            total.add(&s);
        }
        (self.score_stats(&total), per)
    }

    fn align_stats(&self, test: &[String], reference: &[String]) -> MeteorStats {
        let (n1, n2) = (test.len(), reference.len());
        let mut stage: Vec<Vec<Match>> = vec![Vec::new(); n2];
        let mut cov1 = vec![0u32; n1];
        let mut cov2 = vec![0u32; n2];
        let mut add = |m: Match, stage: &mut Vec<Vec<Match>>| {
            for i in m.match_start..m.match_start + m.match_length {
                cov1[i] += 1;
            }
            for j in m.start..m.start + m.length {
                cov2[j] += 1;
            }
            stage[m.start].push(m);
        };
        let one = |module, j, i| Match {
            module,
            start: j,
            length: 1,
            match_start: i,
            match_length: 1,
        };
        // Exact.
        for j in 0..n2 {
            for i in 0..n1 {
                if test[i] == reference[j] {
                    add(one(MODULE_EXACT, j, i), &mut stage);
                }
            }
        }
        let mut phantom: Vec<(usize, usize)> = Vec::new();
        // Identical sentences need exact matches only (as the jar, to avoid beam errors).
        if test != reference {
            let s1: Vec<String> = test
                .iter()
                .map(|w| self.stemmer.stem(w).into_owned())
                .collect();
            let s2: Vec<String> = reference
                .iter()
                .map(|w| self.stemmer.stem(w).into_owned())
                .collect();
            for j in 0..n2 {
                for i in 0..n1 {
                    if s1[i] == s2[j] && test[i] != reference[j] {
                        add(one(MODULE_STEM, j, i), &mut stage);
                        if self.config.emulate_synonym_coverage && self.synonyms.is_none() {
                            phantom.push((i, j));
                        }
                    }
                }
            }
            if let Some(syn) = &self.synonyms {
                let t: Vec<HashSet<u32>> = test.iter().map(|w| syn.synsets(w)).collect();
                let r: Vec<HashSet<u32>> = reference.iter().map(|w| syn.synsets(w)).collect();
                for j in 0..n2 {
                    for i in 0..n1 {
                        if test[i] != reference[j] && !t[i].is_disjoint(&r[j]) {
                            add(one(MODULE_SYNONYM, j, i), &mut stage);
                        }
                    }
                }
            }
            if let Some(table) = &self.paraphrase {
                for m in paraphrase_matches(table, test, reference) {
                    add(m, &mut stage);
                }
            }
        }

        for (i, j) in phantom {
            cov1[i] += 1;
            cov2[j] += 1;
        }
        let mut initial = Partial {
            matches: vec![None; n2],
            matches1: 0,
            matches2: 0,
            chunks: 0,
            idx: 0,
            last_match_end: None,
            distance: 0,
            used1: vec![false; n1],
            used2: vec![false; n2],
        };
        for (j, ms) in stage.iter().enumerate() {
            if ms.len() == 1 {
                let m = ms[0];
                let overlap = (0..m.length).any(|k| cov2[j + k] != 1)
                    || (0..m.match_length).any(|k| cov1[m.match_start + k] != 1);
                if !overlap {
                    initial.matches[j] = Some(m);
                    initial.set_used(&m);
                }
            }
        }
        let best = self.resolve(&stage, initial);

        let fw1: Vec<bool> = test
            .iter()
            .map(|w| self.function_words.contains(w.as_str()))
            .collect();
        let fw2: Vec<bool> = reference
            .iter()
            .map(|w| self.function_words.contains(w.as_str()))
            .collect();
        let mut st = MeteorStats {
            test_length: n1 as f64,
            reference_length: n2 as f64,
            test_function_words: fw1.iter().filter(|&&b| b).count() as f64,
            reference_function_words: fw2.iter().filter(|&&b| b).count() as f64,
            ..Default::default()
        };
        for m in best.matches.iter().flatten() {
            for i in m.match_start..m.match_start + m.match_length {
                if fw1[i] {
                    st.test_function_matches[m.module] += 1.0;
                } else {
                    st.test_content_matches[m.module] += 1.0;
                }
            }
            for j in m.start..m.start + m.length {
                if fw2[j] {
                    st.reference_function_matches[m.module] += 1.0;
                } else {
                    st.reference_content_matches[m.module] += 1.0;
                }
            }
        }
        // Count matches and chunks over the final alignment (`getCountAndChunks`).
        let (mut m1, mut m2, mut chunks) = (0usize, 0usize, 0usize);
        let mut idx = 0usize;
        let mut last_end: Option<usize> = None;
        while idx < best.matches.len() {
            match best.matches[idx] {
                None => {
                    if last_end.is_some() {
                        chunks += 1;
                        last_end = None;
                    }
                    idx += 1;
                }
                Some(m) => {
                    m1 += m.match_length;
                    m2 += m.length;
                    if last_end.is_some_and(|e| e != m.match_start) {
                        chunks += 1;
                    }
                    idx = m.start + m.length;
                    last_end = Some(m.match_start + m.match_length);
                }
            }
        }
        if last_end.is_some() {
            chunks += 1;
        }
        st.chunks = chunks as f64;
        st.test_word_matches = m1 as f64;
        st.reference_word_matches = m2 as f64;
        st
    }

    /// The jar's beam search over the remaining (ambiguous) matches, left to right in the
    /// reference. Quirks kept: distance of a taken match is added to the *skipping* path.
    fn resolve(&self, stage: &[Vec<Match>], start: Partial) -> Partial {
        let n2 = stage.len();
        let mut next = vec![start];
        for current in 0..=n2 {
            let mut paths = std::mem::take(&mut next);
            paths.sort_by(compare_partial);
            for mut path in paths.iter().take(self.config.beam_size).cloned() {
                if current == n2 {
                    if path.last_match_end.is_some() {
                        path.chunks += 1;
                    }
                    next.push(path);
                    continue;
                }
                if path.used2[current] {
                    if current < path.idx {
                        next.push(path);
                    } else if let Some(m) = path.matches.get(path.idx).copied().flatten() {
                        path.add_weighted(&m);
                        path.extend_chunk(&m);
                        path.distance += (m.start as i32 - m.match_start as i32).abs();
                        next.push(path);
                    }
                    continue;
                }
                for m in &stage[current] {
                    if path.is_used(m) {
                        continue;
                    }
                    let mut np = path.clone();
                    np.set_used(m);
                    np.matches[current] = Some(*m);
                    np.add_weighted(m);
                    np.extend_chunk(m);
                    path.distance += (m.start as i32 - m.match_start as i32).abs();
                    next.push(np);
                }
                if path.last_match_end.is_some() {
                    path.chunks += 1;
                    path.last_match_end = None;
                }
                path.idx += 1;
                next.push(path);
            }
            if next.is_empty() {
                if let Some(p) = paths.into_iter().next() {
                    next.push(p);
                }
            }
        }
        next.sort_by(compare_partial);
        next.into_iter().next().unwrap_or_else(|| Partial {
            matches: vec![None; n2],
            matches1: 0,
            matches2: 0,
            chunks: 0,
            idx: 0,
            last_match_end: None,
            distance: 0,
            used1: Vec::new(),
            used2: Vec::new(),
        })
    }
}

impl MeteorScorer for Meteor {
    fn score(&self, candidate: &str, references: &[String]) -> Result<f64, MetricsError> {
        Ok(self.score_stats(&self.segment_stats(candidate, references)))
    }
}

/// A scorer that looks scores up in a table keyed by `(candidate, references)`; used to feed a
/// reference implementation's METEOR scores into [`super::densecap`].
#[derive(Debug, Default, Clone)]
pub struct MeteorLookup {
    pub table: HashMap<(String, Vec<String>), f64>,
}

impl MeteorScorer for MeteorLookup {
    fn score(&self, candidate: &str, references: &[String]) -> Result<f64, MetricsError> {
        self.table
            .get(&(candidate.to_string(), references.to_vec()))
            .copied()
            .ok_or_else(|| {
                MetricsError::Meteor(format!(
                    "no METEOR score for candidate `{candidate}` against {references:?} in the lookup table"
                ))
            })
    }
}

fn paraphrase_matches(
    table: &ParaphraseTable,
    test: &[String],
    reference: &[String],
) -> Vec<Match> {
    let mut out = Vec::new();
    // Phrases of one line whose paraphrase occurs in the other, in both directions.
    for (a, b, a_is_test) in [(test, reference, true), (reference, test, false)] {
        for i in 0..a.len() {
            for len in 1..=table.max_len.min(a.len() - i) {
                let Some(paras) = table.map.get(&a[i..i + len]) else {
                    continue;
                };
                for p in paras {
                    if p.len() > b.len() {
                        continue;
                    }
                    for j in 0..=b.len() - p.len() {
                        if b[j..j + p.len()] == p[..] {
                            out.push(if a_is_test {
                                Match {
                                    module: MODULE_PARAPHRASE,
                                    start: j,
                                    length: p.len(),
                                    match_start: i,
                                    match_length: len,
                                }
                            } else {
                                Match {
                                    module: MODULE_PARAPHRASE,
                                    start: i,
                                    length: len,
                                    match_start: j,
                                    match_length: p.len(),
                                }
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Lower-cases and tokenizes a line as the jar's `-norm` (`Normalizer.normalizeLine`, a port of
/// the Moses tokenizer) does, for the cases that occur in captions (checked against
/// `java -cp meteor-1.5.jar edu.cmu.meteor.util.Normalizer en true`):
/// symbols other than `. ' ` , -` are split off; commas split unless between digits; curly
/// quotes and backquotes become `'`, double quotes `"`; apostrophes: `'s` -> `' s`, `n't` ->
/// `n 't`, `it's` -> `it 's`; hyphens between letters/digits become spaces (`black-and-white`
/// -> `black and white`) while `-lrb-` stays; dotted abbreviations lose their dots
/// (`u.s.` -> `us`); the line's final period is split off.
pub fn normalize_line(s: &str) -> Vec<String> {
    let lower = s.to_lowercase();
    // Quotes.
    let mut t = String::with_capacity(lower.len() + 16);
    let mut chars = lower.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' | '\u{2018}' | '\u{2019}' => t.push('\''),
            '\u{201c}' | '\u{201d}' => t.push('"'),
            '\u{2013}' => t.push('-'),
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                t.push('"');
            }
            _ => t.push(c),
        }
    }
    // Other symbols and commas.
    let v: Vec<char> = t.chars().collect();
    let mut u = String::with_capacity(v.len() * 2);
    for (k, &c) in v.iter().enumerate() {
        let prev = if k > 0 { v[k - 1] } else { ' ' };
        let next = v.get(k + 1).copied().unwrap_or(' ');
        let split = if c == ',' {
            !(prev.is_ascii_digit() && next.is_ascii_digit())
        } else {
            !(c.is_alphanumeric() || c.is_whitespace() || matches!(c, '.' | '\'' | '-'))
        };
        let hyphen_join = c == '-' && prev.is_alphanumeric() && next.is_alphanumeric();
        if split {
            u.push(' ');
            u.push(c);
            u.push(' ');
        } else if hyphen_join {
            u.push(' ');
        } else {
            u.push(c);
        }
    }
    // Apostrophes, one regex of the jar per pass.
    let apostrophe_pass = |s: &str, rule: &dyn Fn(char, char) -> Option<(bool, bool)>| -> String {
        let v: Vec<char> = s.chars().collect();
        let mut out = String::with_capacity(v.len() + 8);
        for (k, &c) in v.iter().enumerate() {
            if c == '\'' {
                let prev = if k > 0 { v[k - 1] } else { ' ' };
                let next = v.get(k + 1).copied().unwrap_or(' ');
                if let Some((before, after)) = rule(prev, next) {
                    if before {
                        out.push(' ');
                    }
                    out.push(c);
                    if after {
                        out.push(' ');
                    }
                    continue;
                }
            }
            out.push(c);
        }
        out
    };
    let a = |c: char| c.is_alphabetic();
    let mut w = apostrophe_pass(&u, &|p, n| (!a(p) && !a(n)).then_some((true, true)));
    w = apostrophe_pass(&w, &|p, n| {
        (!a(p) && !p.is_ascii_digit() && a(n)).then_some((true, true))
    });
    w = apostrophe_pass(&w, &|p, n| (a(p) && !a(n)).then_some((true, true)));
    w = apostrophe_pass(&w, &|p, n| (a(p) && a(n)).then_some((true, false)));
    w = apostrophe_pass(&w, &|p, n| {
        (p.is_ascii_digit() && n == 's').then_some((false, true))
    });
    let mut out: Vec<String> = Vec::new();
    for tok in w.split_whitespace() {
        if tok.len() > 1 && tok.chars().all(|c| c == '-') {
            out.extend(tok.chars().map(|c| c.to_string()));
            continue;
        }
        let cs: Vec<char> = tok.chars().collect();
        let dotted = (1..cs.len().saturating_sub(1))
            .any(|k| cs[k] == '.' && cs[k - 1].is_alphabetic() && cs[k + 1].is_alphabetic());
        if dotted {
            out.push(tok.chars().filter(|&c| c != '.').collect());
        } else {
            out.push(tok.to_string());
        }
    }
    if let Some(last) = out.last_mut() {
        if last.len() > 1 && last.ends_with('.') && !last.ends_with("..") {
            last.pop();
            out.push(".".into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(c: &str, r: &str) -> f64 {
        Meteor::default()
            .score(c, &[r.to_string()])
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn identical_sentence_scores_fmean_without_penalty() {
        assert!((score("a dog runs on the grass", "a dog runs on the grass") - 1.0).abs() < 1e-12);
    }

    #[test]
    fn stem_matches_count_with_stem_weight() {
        // Jar: "a big dogs" vs "a big dog" has 2 exact and 1 stem match.
        let exact = score("a big dog", "a big dog");
        let stem = score("a big dogs", "a big dog");
        assert!(stem > 0.0 && stem < exact);
    }

    #[test]
    fn lone_stem_match_is_dropped_as_by_the_jar() {
        // Jar: "dogs running" vs "dog runs" has no match at all (see `emulate_synonym_coverage`).
        assert_eq!(score("dogs running", "dog runs"), 0.0);
    }

    #[test]
    fn known_value_from_jar() {
        // java -jar meteor-1.5.jar - - -stdio -l en -norm: "a cat sits on a mat" vs
        // "the cat is sitting on the mat" (exact+stem only, no synonyms involved).
        let s = score("a cat sits on a mat", "the cat is sitting on the mat");
        assert!(s > 0.0 && s < 1.0);
    }

    #[test]
    fn normalizer_matches_jar_on_caption_tokens() {
        // Expected: java -cp meteor-1.5.jar edu.cmu.meteor.util.Normalizer en true
        let got = normalize_line("a girl 's kite do n't -lrb- in the snow -rrb- black-and-white it's and/or the man etc.");
        let want = "a girl ' s kite do n 't -lrb- in the snow -rrb- black and white it 's and / or the man etc .";
        assert_eq!(got.join(" "), want);
    }

    #[test]
    fn no_overlap_scores_zero() {
        assert_eq!(score("x y z", "a b c"), 0.0);
    }
}
