//! The Porter stemmer exactly as NLTK's `PorterStemmer()` (mode `NLTK_EXTENSIONS`), the one
//! Google's `rouge-score` uses with `use_stemmer=True`. Ported rule by rule from
//! `nltk/stem/porter.py` (NLTK 3.10.4); tested against it on a word list (see `tests/metrics.rs`).
//!
//! Words are handled as lower-case ASCII byte strings, which is all ROUGE tokenisation produces;
//! other input is returned unchanged.

/// The irregular forms NLTK maps before stemming.
const POOL: [(&str, &str); 16] = [
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Consonant flags: `y` is a consonant at the start or after a vowel.
fn consonant_flags(w: &[u8]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let f = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(f);
    }
    flags
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// The number of vowel-consonant sequences (Porter's m).
fn measure(stem: &[u8]) -> usize {
    let f = consonant_flags(stem);
    f.windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(stem: &[u8]) -> bool {
    !consonant_flags(stem).iter().all(|&c| c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    w.len() >= 2 && w[w.len() - 1] == w[w.len() - 2] && is_consonant(w, w.len() - 1)
}

fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

type Cond<'a> = &'a dyn Fn(&[u8]) -> bool;

/// One rule: suffix (`*d` = any double consonant), replacement, condition on the stem.
struct Rule<'a>(&'a str, Vec<u8>, Option<Cond<'a>>);

/// The first rule whose suffix matches decides: applied if its condition holds, else the word
/// is returned unchanged.
fn apply(word: &[u8], rules: &[Rule<'_>]) -> Vec<u8> {
    for Rule(suffix, rep, cond) in rules {
        if *suffix == "*d" && ends_double_consonant(word) {
            let stem = &word[..word.len() - 2];
            return if cond.is_none_or(|c| c(stem)) {
                [stem, rep].concat()
            } else {
                word.to_vec()
            };
        }
        if word.ends_with(suffix.as_bytes()) {
            let stem = &word[..word.len() - suffix.len()];
            return if cond.is_none_or(|c| c(stem)) {
                [stem, rep].concat()
            } else {
                word.to_vec()
            };
        }
    }
    word.to_vec()
}

fn r<'a>(suffix: &'a str, rep: &str, cond: Option<Cond<'a>>) -> Rule<'a> {
    Rule(suffix, rep.as_bytes().to_vec(), cond)
}

fn strip<'w>(w: &'w [u8], suffix: &str) -> &'w [u8] {
    &w[..w.len() - suffix.len()]
}

fn step1a(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ies") && w.len() == 4 {
        return [strip(w, "ies"), b"ie"].concat();
    }
    apply(
        w,
        &[
            r("sses", "ss", None),
            r("ies", "i", None),
            r("ss", "ss", None),
            r("s", "", None),
        ],
    )
}

fn step1b(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"ied") {
        let rep: &[u8] = if w.len() == 4 { b"ie" } else { b"i" };
        return [strip(w, "ied"), rep].concat();
    }
    if w.ends_with(b"eed") {
        let stem = strip(w, "eed");
        return if measure(stem) > 0 {
            [stem, b"ee"].concat()
        } else {
            w.to_vec()
        };
    }
    let mut inter = None;
    for suffix in ["ed", "ing"] {
        if w.ends_with(suffix.as_bytes()) {
            let stem = strip(w, suffix);
            if contains_vowel(stem) {
                inter = Some(stem);
                break;
            }
        }
    }
    let Some(stem) = inter else {
        return w.to_vec();
    };
    let last = stem[stem.len() - 1];
    let not_lsz = move |_: &[u8]| !matches!(last, b'l' | b's' | b'z');
    let cvc = |s: &[u8]| measure(s) == 1 && ends_cvc(s);
    apply(
        stem,
        &[
            r("at", "ate", None),
            r("bl", "ble", None),
            r("iz", "ize", None),
            Rule("*d", vec![last], Some(&not_lsz)),
            r("", "e", Some(&cvc)),
        ],
    )
}

fn step1c(w: &[u8]) -> Vec<u8> {
    let cond = |s: &[u8]| s.len() > 1 && is_consonant(s, s.len() - 1);
    apply(w, &[r("y", "i", Some(&cond))])
}

fn positive(s: &[u8]) -> bool {
    measure(s) > 0
}

fn step2(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"alli") && positive(strip(w, "alli")) {
        return step2(&[strip(w, "alli"), b"al"].concat());
    }
    let p: Cond<'_> = &positive;
    let logi = |_: &[u8]| positive(&w[..w.len() - 3]);
    apply(
        w,
        &[
            r("ational", "ate", Some(p)),
            r("tional", "tion", Some(p)),
            r("enci", "ence", Some(p)),
            r("anci", "ance", Some(p)),
            r("izer", "ize", Some(p)),
            r("bli", "ble", Some(p)),
            r("alli", "al", Some(p)),
            r("entli", "ent", Some(p)),
            r("eli", "e", Some(p)),
            r("ousli", "ous", Some(p)),
            r("ization", "ize", Some(p)),
            r("ation", "ate", Some(p)),
            r("ator", "ate", Some(p)),
            r("alism", "al", Some(p)),
            r("iveness", "ive", Some(p)),
            r("fulness", "ful", Some(p)),
            r("ousness", "ous", Some(p)),
            r("aliti", "al", Some(p)),
            r("iviti", "ive", Some(p)),
            r("biliti", "ble", Some(p)),
            r("fulli", "ful", Some(p)),
            r("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(w: &[u8]) -> Vec<u8> {
    let p: Cond<'_> = &positive;
    apply(
        w,
        &[
            r("icate", "ic", Some(p)),
            r("ative", "", Some(p)),
            r("alize", "al", Some(p)),
            r("iciti", "ic", Some(p)),
            r("ical", "ic", Some(p)),
            r("ful", "", Some(p)),
            r("ness", "", Some(p)),
        ],
    )
}

fn step4(w: &[u8]) -> Vec<u8> {
    let gt1 = |s: &[u8]| measure(s) > 1;
    let g: Cond<'_> = &gt1;
    let ion = |s: &[u8]| measure(s) > 1 && matches!(s.last(), Some(b's' | b't'));
    apply(
        w,
        &[
            r("al", "", Some(g)),
            r("ance", "", Some(g)),
            r("ence", "", Some(g)),
            r("er", "", Some(g)),
            r("ic", "", Some(g)),
            r("able", "", Some(g)),
            r("ible", "", Some(g)),
            r("ant", "", Some(g)),
            r("ement", "", Some(g)),
            r("ment", "", Some(g)),
            r("ent", "", Some(g)),
            r("ion", "", Some(&ion)),
            r("ou", "", Some(g)),
            r("ism", "", Some(g)),
            r("ate", "", Some(g)),
            r("iti", "", Some(g)),
            r("ous", "", Some(g)),
            r("ive", "", Some(g)),
            r("ize", "", Some(g)),
        ],
    )
}

fn step5a(w: &[u8]) -> Vec<u8> {
    if w.ends_with(b"e") {
        let stem = strip(w, "e");
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w.to_vec()
}

fn step5b(w: &[u8]) -> Vec<u8> {
    let cond = |_: &[u8]| measure(&w[..w.len() - 1]) > 1;
    apply(w, &[r("ll", "l", Some(&cond))])
}

/// Stems one word as NLTK's `PorterStemmer().stem(word)` does.
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some((_, s)) = POOL.iter().find(|(k, _)| *k == lower) {
        return (*s).to_string();
    }
    if word.chars().count() <= 2 || !lower.is_ascii() {
        return lower;
    }
    let w = lower.as_bytes();
    let w = step1a(w);
    let w = step1b(&w);
    let w = step1c(&w);
    let w = step2(&w);
    let w = step3(&w);
    let w = step4(&w);
    let w = step5a(&w);
    let w = step5b(&w);
    String::from_utf8(w).expect("ASCII in, ASCII out")
}
