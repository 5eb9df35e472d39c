//! Bounds on config text, checked before it reaches the YAML parser: its size, and how deeply
//! its collections nest (libyaml takes time quadratic in the depth of nested flow mappings:
//! 100k levels of `{a: ` cost minutes before `serde_yaml_ng` refuses them).
//!
//! The depth comes from one linear pass that follows libyaml's scanner (0.2.5, the one
//! `serde_yaml_ng` runs) token by token: comments, quoted, plain and block scalars, anchors and
//! tags end exactly where libyaml ends them, and libyaml's block indentation stack is kept, so
//! no bracket inside a string is counted and none outside is missed (a text scan that only
//! guessed at strings could be led to miss a whole nested region). The count is the depth of
//! the parsed tree (the tests compare the two), except that a flow collection which is the key
//! of a block mapping is counted one level short while it is open. Where libyaml stops with a
//! syntax error the pass stops too, or goes on: never earlier.

/// Largest config text accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Deepest nesting of collections accepted in a config.
pub const MAX_NESTING: usize = 64;

/// Checks the size and nesting limits of `text` (a `what`: config, value); `Err` is the
/// message, without the source.
pub(super) fn check(text: &str, what: &str) -> Result<(), String> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(too_large(what, text.len() as u64));
    }
    let mut s = Scanner::new(text.as_bytes());
    match s.run() {
        Ok(()) => Ok(()),
        Err(Deep(line)) => Err(format!(
            "line {line}: YAML nesting deeper than {MAX_NESTING} levels"
        )),
    }
}

/// The message for a `what` of `len` bytes.
pub(super) fn too_large(what: &str, len: u64) -> String {
    format!("{what} is {len} bytes, over the {MAX_CONFIG_BYTES}-byte (1 MiB) limit")
}

/// The greatest nesting depth of `text` (stopping just past the limit).
#[cfg(test)]
pub(super) fn depth(text: &str) -> usize {
    let mut s = Scanner::new(text.as_bytes());
    let _ = s.run();
    s.max_depth
}

/// The nesting limit was exceeded at this (1-based) line.
struct Deep(usize);

/// What the pass does next: go on, or stop (libyaml stops here with a syntax error).
type Step = Result<bool, Deep>;

/// A block collection libyaml's scanner has open: its indentation column and kind.
struct Level {
    col: isize,
    map: bool,
    /// A sequence whose `-` sits at this mapping's own column is open ("indentless").
    indentless: bool,
}

/// A flow collection open, and for a sequence whether a `key: value` entry (a mapping of one
/// pair, one level deeper) is open in it.
struct Flow {
    map: bool,
    pair: bool,
}

/// libyaml's scanner state, less the tokens.
struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
    col: usize,
    flow: Vec<Flow>,
    pairs: usize,
    levels: Vec<Level>,
    indentless: usize,
    /// `simple_key_allowed`.
    allowed: bool,
    /// The possible simple key of the block level: (line, byte index, column).
    key: Option<(usize, usize, usize)>,
    max_depth: usize,
}

fn blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn alpha(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

impl<'a> Scanner<'a> {
    fn new(s: &'a [u8]) -> Self {
        let i = if s.starts_with("\u{feff}".as_bytes()) {
            3
        } else {
            0
        };
        Self {
            s,
            i,
            line: 0,
            col: 0,
            flow: Vec::new(),
            pairs: 0,
            levels: Vec::new(),
            indentless: 0,
            allowed: true,
            key: None,
            max_depth: 0,
        }
    }

    /// The byte `k` ahead; NUL (libyaml's end of input) past the end.
    fn at(&self, k: usize) -> u8 {
        self.s.get(self.i + k).copied().unwrap_or(0)
    }

    fn c(&self) -> u8 {
        self.at(0)
    }

    /// The width of the line break `k` bytes ahead, 0 if there is none.
    fn brk(&self, k: usize) -> usize {
        match (self.at(k), self.at(k + 1), self.at(k + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) | (0xE2, 0x80, 0xA8 | 0xA9) => self.width(k),
            _ => 0,
        }
    }

    fn blankz(&self, k: usize) -> bool {
        let c = self.at(k);
        blank(c) || c == 0 || self.brk(k) > 0
    }

    fn width(&self, k: usize) -> usize {
        match self.at(k) {
            c if c < 0x80 => 1,
            c if c >= 0xF0 => 4,
            c if c >= 0xE0 => 3,
            _ => 2,
        }
    }

    /// Moves past one character of a line.
    fn bump(&mut self) {
        self.i = (self.i + self.width(0)).min(self.s.len());
        self.col += 1;
    }

    /// Moves past a line break, if there is one; says whether there was.
    fn skip_line(&mut self) -> bool {
        let w = self.brk(0);
        if w > 0 {
            self.i += w;
            self.line += 1;
            self.col = 0;
        }
        w > 0
    }

    fn skip_to_break(&mut self) {
        while self.c() != 0 && self.brk(0) == 0 {
            self.bump();
        }
    }

    fn doc_marker(&self) -> bool {
        self.col == 0
            && (self.s[self.i..].starts_with(b"---") || self.s[self.i..].starts_with(b"..."))
            && self.blankz(3)
    }

    fn depth_check(&mut self) -> Result<(), Deep> {
        let d = self.levels.len() + self.indentless + self.flow.len() + self.pairs;
        self.max_depth = self.max_depth.max(d);
        if d > MAX_NESTING {
            Err(Deep(self.line + 1))
        } else {
            Ok(())
        }
    }

    fn indent(&self) -> isize {
        self.levels.last().map_or(-1, |l| l.col)
    }

    /// `yaml_parser_roll_indent` (block context only).
    fn roll(&mut self, col: usize, map: bool) -> Result<(), Deep> {
        if !self.in_flow() && self.indent() < col as isize {
            self.levels.push(Level {
                col: col as isize,
                map,
                indentless: false,
            });
            self.depth_check()?;
        }
        Ok(())
    }

    /// `yaml_parser_unroll_indent` (block context only).
    fn unroll(&mut self, col: isize) {
        while !self.in_flow() && self.indent() > col {
            if self.levels.pop().is_some_and(|l| l.indentless) {
                self.indentless -= 1;
            }
        }
    }

    /// A key or value of the mapping at this column ends its indentless sequence.
    fn end_indentless(&mut self, col: usize) {
        if let Some(l) = self.levels.last_mut()
            && l.col == col as isize
            && l.indentless
        {
            l.indentless = false;
            self.indentless -= 1;
        }
    }

    fn save_key(&mut self) {
        if !self.in_flow() && self.allowed {
            self.key = Some((self.line, self.i, self.col));
        }
    }

    fn remove_key(&mut self) {
        if !self.in_flow() {
            self.key = None;
        }
    }

    /// `yaml_parser_scan_to_next_token`.
    fn skip_to_token(&mut self) {
        loop {
            if self.col == 0 && self.s[self.i..].starts_with("\u{feff}".as_bytes()) {
                self.bump();
            }
            while self.c() == b' ' || ((self.in_flow() || !self.allowed) && self.c() == b'\t') {
                self.bump();
            }
            if self.c() == b'#' {
                self.skip_to_break();
            }
            if !self.skip_line() {
                return;
            }
            if !self.in_flow() {
                self.allowed = true;
            }
        }
    }

    /// Follows `yaml_parser_fetch_next_token` to the end of the input or the first error.
    fn run(&mut self) -> Result<(), Deep> {
        loop {
            self.skip_to_token();
            if let Some((line, index, _)) = self.key
                && (line < self.line || index + 1024 < self.i)
            {
                self.key = None;
            }
            self.unroll(self.col as isize);
            let c = self.c();
            let go = match c {
                0 => false,
                b'%' if self.col == 0 => {
                    self.unroll(-1);
                    self.remove_key();
                    self.allowed = false;
                    self.skip_to_break();
                    self.skip_line();
                    true
                }
                b'-' | b'.' if self.doc_marker() => {
                    self.unroll(-1);
                    self.remove_key();
                    self.allowed = false;
                    (0..3).for_each(|_| self.bump());
                    true
                }
                b'[' | b'{' => {
                    self.save_key();
                    self.flow.push(Flow {
                        map: c == b'{',
                        pair: false,
                    });
                    self.depth_check()?;
                    self.allowed = true;
                    self.bump();
                    true
                }
                b']' | b'}' | b',' => {
                    self.remove_key();
                    let pair = if c == b',' {
                        self.flow.last_mut().map(|f| std::mem::take(&mut f.pair))
                    } else {
                        self.flow.pop().map(|f| f.pair)
                    };
                    if pair == Some(true) {
                        self.pairs -= 1;
                    }
                    self.allowed = c == b',';
                    self.bump();
                    true
                }
                b'-' if self.blankz(1) => self.block_entry()?,
                b'?' if self.in_flow() || self.blankz(1) => {
                    if self.in_flow() {
                        self.open_pair()?;
                    } else {
                        if !self.allowed {
                            return Ok(());
                        }
                        self.end_indentless(self.col);
                        self.roll(self.col, true)?;
                    }
                    self.remove_key();
                    self.allowed = !self.in_flow();
                    self.bump();
                    true
                }
                b':' if self.in_flow() || self.blankz(1) => self.value()?,
                b'*' | b'&' => {
                    self.save_key();
                    self.allowed = false;
                    self.anchor()
                }
                b'!' => {
                    self.save_key();
                    self.allowed = false;
                    self.tag()
                }
                b'|' | b'>' if !self.in_flow() => {
                    self.remove_key();
                    self.allowed = true;
                    self.block_scalar()
                }
                b'\'' | b'"' => {
                    self.save_key();
                    self.allowed = false;
                    self.quoted(c)
                }
                _ if self.plain_start(c) => {
                    self.save_key();
                    self.allowed = false;
                    self.plain()
                }
                _ => false,
            };
            if !go {
                return Ok(());
            }
        }
    }

    fn in_flow(&self) -> bool {
        !self.flow.is_empty()
    }

    /// A `?` or `:` in a flow sequence: its entry is a mapping of one pair.
    fn open_pair(&mut self) -> Result<(), Deep> {
        if let Some(f) = self.flow.last_mut()
            && !f.map
            && !f.pair
        {
            f.pair = true;
            self.pairs += 1;
            self.depth_check()?;
        }
        Ok(())
    }

    /// `-` followed by a blank.
    fn block_entry(&mut self) -> Step {
        if !self.in_flow() {
            if !self.allowed {
                return Ok(false);
            }
            let col = self.col;
            if self.indent() == col as isize {
                // A `-` at the column of the mapping it is in starts a sequence that is the
                // value of the last key (the parser's indentless sequence).
                if let Some(l) = self.levels.last_mut()
                    && l.map
                    && !l.indentless
                {
                    l.indentless = true;
                    self.indentless += 1;
                    self.depth_check()?;
                }
            } else {
                self.roll(col, false)?;
            }
        }
        self.remove_key();
        self.allowed = true;
        self.bump();
        Ok(true)
    }

    /// `:` as a value indicator.
    fn value(&mut self) -> Step {
        if !self.in_flow() {
            if let Some((_, _, col)) = self.key.take() {
                self.end_indentless(col);
                self.roll(col, true)?;
                self.allowed = false;
            } else {
                if !self.allowed {
                    return Ok(false);
                }
                self.end_indentless(self.col);
                self.roll(self.col, true)?;
                self.allowed = true;
            }
        } else {
            self.open_pair()?;
            self.allowed = false;
        }
        self.bump();
        Ok(true)
    }

    fn plain_start(&self, c: u8) -> bool {
        !(self.blankz(0) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c))
            || (c == b'-' && !blank(self.at(1)))
            || (!self.in_flow() && (c == b'?' || c == b':') && !self.blankz(1))
    }

    /// `&anchor` or `*alias`.
    fn anchor(&mut self) -> bool {
        self.bump();
        let start = self.i;
        while alpha(self.c()) {
            self.bump();
        }
        self.i > start && (self.blankz(0) || b"?:,]}%@`".contains(&self.c()))
    }

    /// `!tag`, `!!tag`, `!handle!suffix` or `!<verbatim>`.
    fn tag(&mut self) -> bool {
        let uri = |c: u8, verbatim: bool| {
            alpha(c) || b";/?:@&=+$.%!~*'()".contains(&c) || (verbatim && b",[]".contains(&c))
        };
        if self.at(1) == b'<' {
            self.bump();
            self.bump();
            while uri(self.c(), true) {
                self.bump();
            }
            if self.c() != b'>' {
                return false;
            }
            self.bump();
        } else {
            self.bump();
            while uri(self.c(), false) {
                self.bump();
            }
        }
        self.blankz(0) || (self.in_flow() && self.c() == b',')
    }

    /// A single- or double-quoted scalar (`yaml_parser_scan_flow_scalar`).
    fn quoted(&mut self, q: u8) -> bool {
        self.bump();
        loop {
            if self.doc_marker() || self.c() == 0 {
                return false;
            }
            while !self.blankz(0) {
                let c = self.c();
                if q == b'\'' && c == b'\'' && self.at(1) == b'\'' {
                    self.bump();
                    self.bump();
                } else if c == q {
                    break;
                } else if q == b'"' && c == b'\\' && self.brk(1) > 0 {
                    self.bump();
                    self.skip_line();
                    break;
                } else if q == b'"' && c == b'\\' {
                    self.bump();
                    self.bump();
                } else {
                    self.bump();
                }
            }
            if self.c() == q {
                self.bump();
                return true;
            }
            while blank(self.c()) || self.brk(0) > 0 {
                if !self.skip_line() {
                    self.bump();
                }
            }
        }
    }

    /// A plain scalar (`yaml_parser_scan_plain_scalar`).
    fn plain(&mut self) -> bool {
        let indent = self.indent() + 1;
        let mut leading_blanks = false;
        loop {
            if self.doc_marker() || self.c() == b'#' {
                break;
            }
            while !self.blankz(0) {
                let c = self.c();
                if self.in_flow() && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    return false;
                }
                if (c == b':' && self.blankz(1)) || (self.in_flow() && b",[]{}".contains(&c)) {
                    break;
                }
                leading_blanks = false;
                self.bump();
            }
            if !(blank(self.c()) || self.brk(0) > 0) {
                break;
            }
            while blank(self.c()) || self.brk(0) > 0 {
                if self.skip_line() {
                    leading_blanks = true;
                } else if leading_blanks && (self.col as isize) < indent && self.c() == b'\t' {
                    return false;
                } else {
                    self.bump();
                }
            }
            if !self.in_flow() && (self.col as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.allowed = true;
        }
        true
    }

    /// A literal or folded block scalar (`yaml_parser_scan_block_scalar`).
    fn block_scalar(&mut self) -> bool {
        self.bump();
        let mut increment = 0;
        for _ in 0..2 {
            match self.c() {
                b'+' | b'-' => self.bump(),
                b'0' => return false,
                c @ b'1'..=b'9' if increment == 0 => {
                    increment = isize::from(c - b'0');
                    self.bump();
                }
                _ => break,
            }
        }
        while blank(self.c()) {
            self.bump();
        }
        if self.c() == b'#' {
            self.skip_to_break();
        }
        if self.c() != 0 && !self.skip_line() {
            return false;
        }
        let mut indent = match increment {
            0 => 0,
            n if self.indent() >= 0 => self.indent() + n,
            n => n,
        };
        if !self.block_breaks(&mut indent) {
            return false;
        }
        while self.col as isize == indent && self.c() != 0 {
            self.skip_to_break();
            self.skip_line();
            if !self.block_breaks(&mut indent) {
                return false;
            }
        }
        true
    }

    /// `yaml_parser_scan_block_scalar_breaks`: blank lines and indentation; fixes the content
    /// indentation when it is still 0.
    fn block_breaks(&mut self, indent: &mut isize) -> bool {
        let mut max = 0;
        loop {
            while (*indent == 0 || (self.col as isize) < *indent) && self.c() == b' ' {
                self.bump();
            }
            max = max.max(self.col as isize);
            if (*indent == 0 || (self.col as isize) < *indent) && self.c() == b'\t' {
                return false;
            }
            if !self.skip_line() {
                break;
            }
        }
        if *indent == 0 {
            *indent = max.max(self.indent() + 1).max(1);
        }
        true
    }
}
