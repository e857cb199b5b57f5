//! BBS layouts: how the directory of a BBS that does not use bbsync's own
//! tree (DESIGN §3) maps to objects, and back (docs/layouts.md).
//!
//! A layout is a list of rules, tried in order; the first that matches a
//! path decides. A rule's `path` is a glob relative to the BBS's root, `/`
//! separated: `*` matches any run of characters within one path component,
//! `?` one character, and a component `**` one or more whole components.
//! A path that ends in `/` matches directories (each is one object, its
//! files packed as an archive), any other path regular files. Each `*`,
//! `?` and `**` is a capture, numbered from 1 left to right; the `name`
//! and `owner` templates refer to them as `{1}`, `{2}`... (`{{` and `}}`
//! are literal braces). A rule is either an object rule (`kind`, `name`,
//! optional `owner`) or `ignore = true`; the `ignore` list holds more
//! ignore patterns, tried after the rules.
//!
//! Import walks the tree: a directory that a rule matches is an object (or
//! skipped, for an ignore rule), else it is entered if some rule could
//! match below it, else it is refused; a file that no rule matches is
//! refused. So nothing is left out silently. Export places each object by
//! solving its rule's name template for the captures, filling them into
//! the path, and checking that a forward match of that path gives the same
//! object again.
//!
//! Every capture of a rule's path must appear in its `name`, so that export
//! can place the object. SQLite databases are found by their header
//! wherever they are, and their `-wal`, `-shm` and `-journal` files belong
//! to them ([`crate::sqlite`]).

use std::{
    fs,
    path::{Path, PathBuf},
};

use bbsync_protocol::Shape;
use serde::Deserialize;

use crate::{
    Store,
    archive::{Child, Meta, TreeDir, check_rel_path},
    bbs::{BBS_KINDS, Source, open_tree, source_at},
    error::{Result, StoreError},
    import::ImportStats,
    progress::Progress,
};

/// The layouts built into bbsync: (name, layout file text).
pub const BUILTIN: &[(&str, &str)] = &[("axon", include_str!("../layouts/axon.toml"))];

/// The name that selects bbsync's own tree layout (`store/src/bbs.rs`).
pub const NATIVE: &str = "bbsync";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    /// One line saying what BBS this is for.
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    rule: Vec<RuleFile>,
    #[serde(default)]
    ignore: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    path: String,
    kind: Option<String>,
    name: Option<String>,
    owner: Option<String>,
    #[serde(default)]
    ignore: bool,
}

/// One token of a path component pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(String),
    /// `*`: any run of characters (no `/`).
    Star,
    /// `?`: one character (not `/`).
    One,
}

/// One path component of a rule's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Comp(Vec<Tok>),
    /// `**`: one or more whole components.
    AnyDirs,
}

/// What a capture may hold (for solving name templates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapKind {
    Star,
    One,
    AnyDirs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Cap(usize),
}

/// A name or owner template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Part>);

#[derive(Debug, Clone)]
enum Action {
    Ignore,
    Object {
        kind: String,
        name: Template,
        owner: Option<Template>,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    /// The path as written, for messages.
    text: String,
    segs: Vec<Seg>,
    dir: bool,
    caps: Vec<CapKind>,
    action: Action,
}

/// A loaded, checked layout.
#[derive(Debug, Clone)]
pub struct Layout {
    name: String,
    description: Option<String>,
    rules: Vec<Rule>,
}

/// Where a path stands under a layout.
#[derive(Debug)]
enum Verdict<'a> {
    /// An object of this rule, with the captures.
    Object(&'a Rule, Vec<String>),
    /// An ignore rule matched.
    Ignored,
    /// No rule matched.
    Uncovered,
}

fn layout_err(what: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Layout {
        what: what.to_string(),
        reason: reason.into(),
    }
}

fn parse_pattern(what: &str, path: &str) -> Result<(Vec<Seg>, bool, Vec<CapKind>)> {
    let bad = |r: &str| layout_err(what, format!("path {path:?}: {r}"));
    let (body, dir) = match path.strip_suffix('/') {
        Some(b) => (b, true),
        None => (path, false),
    };
    if body.is_empty() || body.starts_with('/') {
        return Err(bad("must be a relative path, not empty"));
    }
    let mut segs = Vec::new();
    let mut caps = Vec::new();
    for comp in body.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(bad("empty, . and .. components are not allowed"));
        }
        if let Some(c) = comp
            .chars()
            .find(|c| "[]{}\\".contains(*c) || c.is_control())
        {
            return Err(bad(&format!("{c:?} is not supported (only *, ? and **)")));
        }
        if comp == "**" {
            segs.push(Seg::AnyDirs);
            caps.push(CapKind::AnyDirs);
            continue;
        }
        if comp.contains("**") {
            return Err(bad("** must be a whole path component"));
        }
        let mut toks = Vec::new();
        let mut lit = String::new();
        for ch in comp.chars() {
            match ch {
                '*' | '?' => {
                    if !lit.is_empty() {
                        toks.push(Tok::Lit(std::mem::take(&mut lit)));
                    }
                    if ch == '*' {
                        toks.push(Tok::Star);
                        caps.push(CapKind::Star);
                    } else {
                        toks.push(Tok::One);
                        caps.push(CapKind::One);
                    }
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(lit));
        }
        segs.push(Seg::Comp(toks));
    }
    Ok((segs, dir, caps))
}

fn parse_template(what: &str, field: &str, t: &str, ncaps: usize) -> Result<Template> {
    let bad = |r: String| layout_err(what, format!("{field} {t:?}: {r}"));
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut num = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(d) if d.is_ascii_digit() => num.push(d),
                        _ => return Err(bad("a capture is written {N}, N a number".into())),
                    }
                }
                let n: usize = num
                    .parse()
                    .map_err(|_| bad("a capture is written {N}, N a number".into()))?;
                if n == 0 || n > ncaps {
                    return Err(bad(format!(
                        "{{{n}}} does not exist: the path has {ncaps} wildcard(s)"
                    )));
                }
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Cap(n));
            }
            '}' => return Err(bad("unmatched } (write }} for a literal brace)".into())),
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    if parts.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    Ok(Template(parts))
}

impl Template {
    fn expand(&self, caps: &[String]) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Cap(n) => s.push_str(&caps[n - 1]),
            }
        }
        s
    }

    fn uses(&self, n: usize) -> bool {
        self.0.contains(&Part::Cap(n))
    }

    /// Calls `f` with each assignment of captures that makes the template
    /// produce `text` (captures of the kinds in `kinds`), until `f` says stop.
    fn solve(&self, text: &str, kinds: &[CapKind], f: &mut dyn FnMut(&[String]) -> bool) {
        let mut caps: Vec<Option<String>> = vec![None; kinds.len()];
        fn go(
            parts: &[Part],
            text: &str,
            kinds: &[CapKind],
            caps: &mut Vec<Option<String>>,
            f: &mut dyn FnMut(&[String]) -> bool,
        ) -> bool {
            let Some((first, rest)) = parts.split_first() else {
                if !text.is_empty() {
                    return false;
                }
                let full: Option<Vec<String>> = caps.iter().cloned().collect();
                return full.is_some_and(|c| f(&c));
            };
            match first {
                Part::Lit(l) => text
                    .strip_prefix(l.as_str())
                    .is_some_and(|t| go(rest, t, kinds, caps, f)),
                Part::Cap(n) => {
                    let i = n - 1;
                    if let Some(v) = caps[i].clone() {
                        return text
                            .strip_prefix(v.as_str())
                            .is_some_and(|t| go(rest, t, kinds, caps, f));
                    }
                    let ends: Vec<usize> =
                        text.char_indices().map(|(j, c)| j + c.len_utf8()).collect();
                    let mut cands = vec![0];
                    cands.extend(ends);
                    for end in cands {
                        let v = &text[..end];
                        let ok = match kinds[i] {
                            CapKind::Star => !v.contains('/'),
                            CapKind::One => v.chars().count() == 1 && v != "/",
                            CapKind::AnyDirs => {
                                !v.is_empty() && v.split('/').all(|c| !c.is_empty())
                            }
                        };
                        if !ok {
                            if kinds[i] != CapKind::AnyDirs && v.contains('/') {
                                break;
                            }
                            continue;
                        }
                        caps[i] = Some(v.to_string());
                        if go(rest, &text[end..], kinds, caps, f) {
                            return true;
                        }
                        caps[i] = None;
                    }
                    false
                }
            }
        }
        go(&self.0, text, kinds, &mut caps, f);
    }
}

/// Matches one path component against a component pattern, lazily (each
/// `*` as short as possible); pushes the captures.
fn match_comp(toks: &[Tok], s: &str, caps: &mut Vec<String>) -> bool {
    let Some((first, rest)) = toks.split_first() else {
        return s.is_empty();
    };
    match first {
        Tok::Lit(l) => s
            .strip_prefix(l.as_str())
            .is_some_and(|t| match_comp(rest, t, caps)),
        Tok::One => {
            let mut it = s.chars();
            let Some(c) = it.next() else { return false };
            caps.push(c.to_string());
            if match_comp(rest, it.as_str(), caps) {
                return true;
            }
            caps.pop();
            false
        }
        Tok::Star => {
            let mut ends = vec![0];
            ends.extend(s.char_indices().map(|(j, c)| j + c.len_utf8()));
            for end in ends {
                caps.push(s[..end].to_string());
                if match_comp(rest, &s[end..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
    }
}

/// Matches path components against a pattern; `Some(captures)` on a match.
fn match_segs(segs: &[Seg], comps: &[&str], caps: &mut Vec<String>) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        return comps.is_empty();
    };
    match first {
        Seg::AnyDirs => {
            for k in 1..=comps.len() {
                caps.push(comps[..k].join("/"));
                if match_segs(rest, &comps[k..], caps) {
                    return true;
                }
                caps.pop();
            }
            false
        }
        Seg::Comp(toks) => {
            let Some((c, crest)) = comps.split_first() else {
                return false;
            };
            let n = caps.len();
            if match_comp(toks, c, caps) && match_segs(rest, crest, caps) {
                return true;
            }
            caps.truncate(n);
            false
        }
    }
}

/// Whether some path strictly below the directory `comps` could match.
fn could_match_below(segs: &[Seg], comps: &[&str]) -> bool {
    let Some((first, rest)) = segs.split_first() else {
        return false;
    };
    let Some((c, crest)) = comps.split_first() else {
        return true;
    };
    match first {
        Seg::AnyDirs => true,
        Seg::Comp(toks) => match_comp(toks, c, &mut Vec::new()) && could_match_below(rest, crest),
    }
}

impl Rule {
    fn matches(&self, comps: &[&str], is_dir: bool) -> Option<Vec<String>> {
        if self.dir != is_dir {
            return None;
        }
        let mut caps = Vec::new();
        match_segs(&self.segs, comps, &mut caps).then_some(caps)
    }

    /// The path of `caps` filled into the pattern.
    fn fill(&self, caps: &[String]) -> String {
        let mut i = 0;
        let mut comps = Vec::new();
        for s in &self.segs {
            match s {
                Seg::AnyDirs => {
                    comps.push(caps[i].clone());
                    i += 1;
                }
                Seg::Comp(toks) => {
                    let mut c = String::new();
                    for t in toks {
                        match t {
                            Tok::Lit(l) => c.push_str(l),
                            Tok::Star | Tok::One => {
                                c.push_str(&caps[i]);
                                i += 1;
                            }
                        }
                    }
                    comps.push(c);
                }
            }
        }
        comps.join("/")
    }
}

impl Layout {
    /// A built-in layout by name, a layout file (a path; relative to
    /// `base`), or an error naming the built-in ones. [`NATIVE`] is not a
    /// `Layout` (the caller uses `bbs.rs` for it).
    pub fn load(spec: &str, base: &Path) -> Result<Layout> {
        if let Some((name, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
            return Layout::parse(name, text);
        }
        let path = base.join(spec);
        if !spec.contains('/') && !spec.ends_with(".toml") && !path.exists() {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            return Err(layout_err(
                spec,
                format!(
                    "no such built-in layout ({}, {NATIVE}) and no such file",
                    names.join(", ")
                ),
            ));
        }
        let text = fs::read_to_string(&path)
            .map_err(|e| layout_err(&path.display().to_string(), e.to_string()))?;
        Layout::parse(&path.display().to_string(), &text)
    }

    /// Parses and checks a layout file's text; `name` labels it in messages.
    pub fn parse(name: &str, text: &str) -> Result<Layout> {
        let file: LayoutFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
            let reason = match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_string(),
            };
            layout_err(name, reason)
        })?;
        let mut rules = Vec::new();
        for (i, r) in file.rule.iter().enumerate() {
            let what = format!("{name}, rule {} ({:?})", i + 1, r.path);
            let (segs, dir, caps) = parse_pattern(&what, &r.path)?;
            let action = if r.ignore {
                if r.kind.is_some() || r.name.is_some() || r.owner.is_some() {
                    return Err(layout_err(
                        &what,
                        "an ignore rule has no kind, name or owner",
                    ));
                }
                Action::Ignore
            } else {
                let kind = r
                    .kind
                    .clone()
                    .ok_or_else(|| layout_err(&what, "needs kind and name (or ignore = true)"))?;
                bbsync_protocol::manifest::check_kind(&kind)
                    .map_err(|e| layout_err(&what, e.to_string()))?;
                let name_t = r
                    .name
                    .as_deref()
                    .ok_or_else(|| layout_err(&what, "needs a name template"))?;
                let name_t = parse_template(&what, "name", name_t, caps.len())?;
                let owner = r
                    .owner
                    .as_deref()
                    .map(|o| parse_template(&what, "owner", o, caps.len()))
                    .transpose()?;
                if let Some(n) = (1..=caps.len()).find(|n| !name_t.uses(*n)) {
                    return Err(layout_err(
                        &what,
                        format!(
                            "wildcard {{{n}}} of the path is not used in the name, so export-bbs could not place the object"
                        ),
                    ));
                }
                if BBS_KINDS.contains(&kind.as_str()) {
                    let want_dir = matches!(kind.as_str(), "applet" | "applet-data");
                    if want_dir != dir {
                        return Err(layout_err(
                            &what,
                            format!(
                                "a {kind} object must be {} (a path {})",
                                if want_dir { "a directory" } else { "a file" },
                                if want_dir {
                                    "ending in /"
                                } else {
                                    "not ending in /"
                                }
                            ),
                        ));
                    }
                }
                Action::Object {
                    kind,
                    name: name_t,
                    owner,
                }
            };
            rules.push(Rule {
                text: r.path.clone(),
                segs,
                dir,
                caps,
                action,
            });
        }
        for (i, p) in file.ignore.iter().enumerate() {
            let what = format!("{name}, ignore pattern {} ({p:?})", i + 1);
            let (segs, dir, caps) = parse_pattern(&what, p)?;
            rules.push(Rule {
                text: p.clone(),
                segs,
                dir,
                caps,
                action: Action::Ignore,
            });
        }
        if !rules
            .iter()
            .any(|r| matches!(r.action, Action::Object { .. }))
        {
            return Err(layout_err(
                name,
                "has no object rule ([[rule]] with kind and name)",
            ));
        }
        Ok(Layout {
            name: name.to_string(),
            description: file.description,
            rules,
        })
    }

    /// The layout's name (a built-in name or the file's path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its description line, if it has one.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The kinds its object rules make: `import-bbs` tombstones live objects
    /// of these kinds that are gone from the tree, `export-bbs` writes them.
    pub fn kinds(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self
            .rules
            .iter()
            .filter_map(|r| match &r.action {
                Action::Object { kind, .. } => Some(kind.as_str()),
                Action::Ignore => None,
            })
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    }

    fn verdict(&self, comps: &[&str], is_dir: bool) -> Verdict<'_> {
        for r in &self.rules {
            if let Some(caps) = r.matches(comps, is_dir) {
                return match r.action {
                    Action::Ignore => Verdict::Ignored,
                    Action::Object { .. } => Verdict::Object(r, caps),
                };
            }
        }
        Verdict::Uncovered
    }

    fn could_enter(&self, comps: &[&str]) -> bool {
        self.rules.iter().any(|r| could_match_below(&r.segs, comps))
    }

    fn uncovered(&self, path: &Path) -> StoreError {
        StoreError::BadTree {
            path: path.to_path_buf(),
            reason: format!(
                "not covered by layout {} (add a rule or an ignore pattern for it)",
                self.name
            ),
        }
    }

    /// Walks a BBS's directory into import sources (see the module docs).
    /// As for bbsync's own tree, the walk goes through directory
    /// descriptors and never follows a symlink; each source keeps the root's
    /// descriptor and its path below it (`archive::Anchor`).
    pub fn scan(&self, root: &Path) -> Result<Vec<Source>> {
        self.scan_in(root, None)
    }

    /// Like [`Layout::scan`], looking only at what `focus` names (the whole
    /// tree without one): what a batch of the watcher imports.
    pub fn scan_in(&self, root: &Path, focus: Option<&crate::bbs::Focus>) -> Result<Vec<Source>> {
        let tree = open_tree(root)?;
        let mut out = Vec::new();
        self.scan_dir(&tree, &tree, &mut Vec::new(), focus, &mut out)?;
        // Held until every source is sealed: not a third more than needed.
        out.shrink_to_fit();
        Ok(out)
    }

    fn scan_dir(
        &self,
        root: &TreeDir,
        dir: &TreeDir,
        comps: &mut Vec<String>,
        focus: Option<&crate::bbs::Focus>,
        out: &mut Vec<Source>,
    ) -> Result<()> {
        let rel_here = comps.join("/");
        let (listed, all) = crate::bbs::children_in(focus, dir, &rel_here)?;
        let (kids, mut companions) = crate::sqlite::split_companions(dir, listed);
        if all && kids.is_empty() && !comps.is_empty() {
            tracing::warn!(path = %dir.path().display(), "empty directory is not kept (no object in it)");
        }
        let rel_dir = rel_here;
        for c in kids {
            if comps.is_empty() && c.name == crate::live::STATE_DIR {
                // A live tree's marker and temp files (crate::live).
                continue;
            }
            comps.push(c.name.clone());
            let rel = comps.join("/");
            check_rel_path(&rel).map_err(|reason| StoreError::BadTree {
                path: c.path.clone(),
                reason,
            })?;
            let view: Vec<&str> = comps.iter().map(String::as_str).collect();
            if c.meta.is_dir() {
                match self.verdict(&view, true) {
                    Verdict::Ignored => {}
                    Verdict::Object(rule, caps) => {
                        out.push(self.source(root, dir, &rel_dir, &c, rule, &caps, &[])?)
                    }
                    Verdict::Uncovered if self.could_enter(&view) => {
                        self.scan_dir(root, &dir.subdir(&c)?, comps, focus, out)?
                    }
                    Verdict::Uncovered => return Err(self.uncovered(&c.path)),
                }
            } else if c.meta.is_file() {
                let comp = companions.remove(&c.name).unwrap_or_default();
                match self.verdict(&view, false) {
                    Verdict::Ignored => {}
                    Verdict::Object(rule, caps) => {
                        out.push(self.source(root, dir, &rel_dir, &c, rule, &caps, &comp)?)
                    }
                    Verdict::Uncovered => return Err(self.uncovered(&c.path)),
                }
            } else {
                return Err(StoreError::BadTree {
                    path: c.path,
                    reason: "symlinks and special files are not supported".into(),
                });
            }
            comps.pop();
        }
        Ok(())
    }

    /// The source for the child `c` of `dir` (`rel_dir` below `root`) that
    /// `rule` matched with `caps`.
    #[allow(clippy::too_many_arguments)]
    fn source(
        &self,
        root: &TreeDir,
        dir: &TreeDir,
        rel_dir: &str,
        c: &Child,
        rule: &Rule,
        caps: &[String],
        companions: &[(String, Meta)],
    ) -> Result<Source> {
        let Action::Object { kind, name, owner } = &rule.action else {
            return Err(self.uncovered(&c.path));
        };
        tracing::trace!(path = %c.path.display(), rule = %rule.text, "layout match");
        let mut src = source_at(
            root,
            dir,
            rel_dir,
            c,
            kind,
            &name.expand(caps),
            owner.as_ref().map(|o| o.expand(caps)),
        )?;
        src.stat_digest = crate::sqlite::digest_with_companions(src.stat_digest, companions);
        Ok(src)
    }

    /// Where an object goes under this layout (relative to the root), or
    /// `None` when no rule of its kind and shape produces exactly this kind,
    /// name and owner.
    pub fn place(
        &self,
        kind: &str,
        name: &str,
        owner: Option<&str>,
        shape: Shape,
    ) -> Option<PathBuf> {
        let is_dir = shape == Shape::Dir;
        for (i, r) in self.rules.iter().enumerate() {
            let Action::Object {
                kind: k,
                name: nt,
                owner: ot,
            } = &r.action
            else {
                continue;
            };
            if k != kind || r.dir != is_dir {
                continue;
            }
            let mut found = None;
            nt.solve(name, &r.caps, &mut |caps| {
                let produced_owner = ot.as_ref().map(|o| o.expand(caps));
                if produced_owner.as_deref() != owner {
                    return false;
                }
                let path = r.fill(caps);
                if check_rel_path(&path).is_err() || !self.resolves_to(&path, is_dir, i, caps) {
                    return false;
                }
                found = Some(PathBuf::from(path));
                true
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Whether an import would read `path` as the object of rule `index`
    /// with `caps`: its ancestors are entered (no rule matches them as
    /// directories), and the path's own first match is that rule.
    fn resolves_to(&self, path: &str, is_dir: bool, index: usize, caps: &[String]) -> bool {
        let comps: Vec<&str> = path.split('/').collect();
        for k in 1..comps.len() {
            if !matches!(self.verdict(&comps[..k], true), Verdict::Uncovered) {
                return false;
            }
        }
        match self.verdict(&comps, is_dir) {
            Verdict::Object(r, c) => std::ptr::eq(r, &self.rules[index]) && c == caps,
            _ => false,
        }
    }
}

impl Store {
    /// Imports a BBS's own directory through a layout; live objects of the
    /// layout's kinds that are gone from the directory get a tombstone.
    pub fn import_layout(
        &self,
        root: &Path,
        layout: &Layout,
        progress: &dyn Progress,
    ) -> Result<ImportStats> {
        let t = std::time::Instant::now();
        let sources = layout.scan(root)?;
        tracing::info!(elapsed = ?t.elapsed(), sources = sources.len(), layout = layout.name(), "import: tree scanned");
        self.run_import_kinds(
            sources,
            &layout.kinds(),
            &std::collections::HashSet::new(),
            progress,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn layout(text: &str) -> Layout {
        Layout::parse("test", text).unwrap()
    }

    fn err(text: &str) -> String {
        Layout::parse("test", text).unwrap_err().to_string()
    }

    const SAMPLE: &str = r#"
        ignore = ["logs/", "*.pyc"]

        [[rule]]
        path = "db/*.sqlite3"
        kind = "database"
        name = "{1}"

        [[rule]]
        path = "users/*/"
        kind = "user-data"
        name = "{1}"
        owner = "{1}"

        [[rule]]
        path = "media/**"
        kind = "file"
        name = "media/{1}"

        [[rule]]
        path = "boards/*/msg-?.txt"
        kind = "message"
        name = "{1}/{2}"

        [[rule]]
        path = "users/tmp/"
        kind = "user-data"
        name = "shadowed"
    "#;

    #[test]
    fn rules_match_first_wins_and_capture() {
        let l = layout(SAMPLE);
        let v = |p: &str, d: bool| match l.verdict(&p.split('/').collect::<Vec<_>>(), d) {
            Verdict::Object(r, caps) => format!("{} {caps:?}", r.text),
            Verdict::Ignored => "ignored".into(),
            Verdict::Uncovered => "uncovered".into(),
        };
        assert_eq!(v("db/main.sqlite3", false), "db/*.sqlite3 [\"main\"]");
        assert_eq!(v("db/main.sqlite3", true), "uncovered");
        assert_eq!(v("users/alice", true), "users/*/ [\"alice\"]");
        assert_eq!(v("users/alice", false), "uncovered");
        assert_eq!(v("media/a/b/c.png", false), "media/** [\"a/b/c.png\"]");
        assert_eq!(v("media", false), "uncovered");
        assert_eq!(
            v("boards/general/msg-7.txt", false),
            "boards/*/msg-?.txt [\"general\", \"7\"]"
        );
        assert_eq!(v("boards/general/msg-17.txt", false), "uncovered");
        assert_eq!(v("logs", true), "ignored");
        assert_eq!(v("x.pyc", false), "ignored");
        assert_eq!(v("a/x.pyc", false), "uncovered");
        // users/*/ comes first: the later users/tmp/ rule never applies.
        assert_eq!(v("users/tmp", true), "users/*/ [\"tmp\"]");
        assert_eq!(l.kinds(), vec!["database", "file", "message", "user-data"]);
    }

    #[test]
    fn export_places_objects_where_import_found_them() {
        let l = layout(SAMPLE);
        let p = |k: &str, n: &str, o: Option<&str>, s: Shape| {
            l.place(k, n, o, s).map(|p| p.display().to_string())
        };
        assert_eq!(
            p("database", "main", None, Shape::File).as_deref(),
            Some("db/main.sqlite3")
        );
        assert_eq!(
            p("user-data", "alice", Some("alice"), Shape::Dir).as_deref(),
            Some("users/alice")
        );
        // The owner must be the one the rule makes.
        assert_eq!(p("user-data", "alice", Some("bob"), Shape::Dir), None);
        assert_eq!(p("user-data", "alice", None, Shape::Dir), None);
        assert_eq!(
            p("file", "media/a/b.png", None, Shape::File).as_deref(),
            Some("media/a/b.png")
        );
        assert_eq!(
            p("message", "general/7", None, Shape::File).as_deref(),
            Some("boards/general/msg-7.txt")
        );
        // No rule makes these.
        assert_eq!(p("message", "general/77", None, Shape::File), None);
        assert_eq!(p("file", "other/b.png", None, Shape::File), None);
        assert_eq!(p("database", "a/b", None, Shape::File), None);
        assert_eq!(p("database", "main", None, Shape::Dir), None);
        // Shadowed by users/*/: import would never make it, export does not place it.
        assert_eq!(p("user-data", "shadowed", None, Shape::Dir), None);
        // A name that would need a bad path.
        assert_eq!(p("file", "media/../x", None, Shape::File), None);
    }

    #[test]
    fn bad_layouts_are_refused_with_the_rule_named() {
        let e = err("[[rule]]\npath = \"a/*\"\nkind = \"file\"\nname = \"x\"\n");
        assert!(e.contains("rule 1") && e.contains("wildcard {1}"), "{e}");
        let e = err("[[rule]]\npath = \"a/*\"\nkind = \"file\"\nname = \"{2}\"\n");
        assert!(e.contains("{2} does not exist"), "{e}");
        let e = err("[[rule]]\npath = \"a/b**\"\nkind = \"file\"\nname = \"x\"\n");
        assert!(e.contains("** must be a whole path component"), "{e}");
        let e = err("[[rule]]\npath = \"/abs\"\nkind = \"file\"\nname = \"x\"\n");
        assert!(e.contains("relative"), "{e}");
        let e = err("[[rule]]\npath = \"a/[ab]\"\nkind = \"file\"\nname = \"x\"\n");
        assert!(e.contains("not supported"), "{e}");
        let e = err("[[rule]]\npath = \"apps/*\"\nkind = \"applet\"\nname = \"{1}\"\n");
        assert!(e.contains("must be a directory"), "{e}");
        let e = err("[[rule]]\npath = \"a\"\nkind = \"Bad Kind\"\nname = \"x\"\n");
        assert!(e.contains("rule 1"), "{e}");
        let e = err("[[rule]]\npath = \"a\"\nignore = true\nkind = \"file\"\n");
        assert!(e.contains("ignore rule has no kind"), "{e}");
        let e = err("ignore = [\"a\"]\n");
        assert!(e.contains("no object rule"), "{e}");
        let e = err("[[rule]]\npath = \"a\"\nkind = \"file\"\nname = \"x\"\ncolour = 1\n");
        assert!(e.contains("unknown field"), "{e}");
        let e = err("[[rule]]\npath = \"a/*\"\nkind = \"file\"\nname = \"{1\"\n");
        assert!(e.contains("{N}"), "{e}");
    }

    #[test]
    fn the_builtin_axon_layout_loads_and_round_trips() {
        let l = Layout::load("axon", Path::new("/nonexistent")).unwrap();
        assert!(l.kinds().contains(&"database"));
        assert_eq!(
            l.place("database", "axon_bbs.sqlite3", None, Shape::File),
            Some(PathBuf::from("data/axon_bbs.sqlite3"))
        );
        assert_eq!(
            l.place("user-data", "alice", Some("alice"), Shape::Dir),
            Some(PathBuf::from("data/user_data/alice"))
        );
        let e = Layout::load("nosuch", Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("axon") && e.contains("no such built-in layout"),
            "{e}"
        );
    }

    #[test]
    fn scan_refuses_what_no_rule_covers_and_skips_companions() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let l = layout(SAMPLE);
        fs::create_dir_all(root.join("db")).unwrap();
        fs::create_dir_all(root.join("users/alice")).unwrap();
        fs::create_dir_all(root.join("logs")).unwrap();
        fs::write(root.join("users/alice/save"), "x").unwrap();
        fs::write(root.join("logs/x.log"), "x").unwrap();
        fs::write(root.join("x.pyc"), "x").unwrap();
        let mut db = crate::sqlite::HEADER.to_vec();
        db.resize(4096, 0);
        fs::write(root.join("db/main.sqlite3"), &db).unwrap();
        fs::write(root.join("db/main.sqlite3-wal"), "wal").unwrap();
        fs::write(root.join("db/main.sqlite3-shm"), "shm").unwrap();
        let found = l.scan(root).unwrap();
        let names: Vec<(String, String, Option<String>)> = found
            .iter()
            .map(|s| (s.kind.clone(), s.name.clone(), s.owner.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("database".into(), "main".into(), None),
                ("user-data".into(), "alice".into(), Some("alice".into())),
            ]
        );
        // The WAL's metadata is part of the database's change detection.
        let before = found[0].stat_digest;
        fs::write(root.join("db/main.sqlite3-wal"), "wal grew").unwrap();
        assert_ne!(l.scan(root).unwrap()[0].stat_digest, before);
        fs::write(root.join("stray.txt"), "x").unwrap();
        let e = l.scan(root).unwrap_err().to_string();
        assert!(
            e.contains("stray.txt") && e.contains("not covered by layout test"),
            "{e}"
        );
        fs::remove_file(root.join("stray.txt")).unwrap();
        fs::create_dir_all(root.join("db/sub")).unwrap();
        let e = l.scan(root).unwrap_err().to_string();
        assert!(e.contains("db/sub") && e.contains("not covered"), "{e}");
    }
}
