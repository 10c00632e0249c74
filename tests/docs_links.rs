//! Every link in the README and the docs leads somewhere: a relative link names a file or
//! directory of the repository, and a `#fragment` a heading of the page it points at (GitHub's
//! heading anchors). Links to other sites are not fetched (the tests run offline).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The repository's Markdown pages a reader follows links through.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md"), root.join("SECURITY.md")];
    for dir in [
        "docs",
        "charts/token-sidecar",
        "bench",
        "examples/ringcentral-node",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The targets of `[text](target)` links (inline code spans removed first).
fn links(text: &str) -> Vec<String> {
    let mut clean = String::new();
    for (i, part) in prose(text).split('`').enumerate() {
        if i % 2 == 0 {
            clean.push_str(part);
        }
    }
    let mut out = Vec::new();
    let mut rest = clean.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            let target = rest[..end].trim();
            // `[x](url "title")`
            let target = target.split_whitespace().next().unwrap_or("");
            out.push(target.to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped except `-` and `_`, spaces
/// become `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings (repeated headings get `-1`, `-2`, ...).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text).lines() {
        let Some(h) = line.strip_prefix('#') else {
            continue;
        };
        let h = h.trim_start_matches('#');
        if !h.starts_with(' ') {
            continue;
        }
        let base = slug(&h.replace('`', ""));
        let mut a = base.clone();
        let mut n = 0;
        while seen.contains(&a) {
            n += 1;
            a = format!("{base}-{n}");
        }
        seen.insert(a);
    }
    seen
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages(root) {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.is_empty()
                || link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, fragment) = match link.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            let shown = format!(
                "{}: {link}",
                page.strip_prefix(root).unwrap_or(&page).display()
            );
            if !target.exists() {
                broken.push(format!("{shown} (no such file)"));
                continue;
            }
            if let Some(f) = fragment {
                if target.is_file() && target.extension().is_some_and(|x| x == "md") {
                    let t = std::fs::read_to_string(&target).unwrap();
                    if !anchors(&t).contains(f) {
                        broken.push(format!("{shown} (no heading with that anchor)"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 50,
        "only {checked} links found: is the parser right?"
    );
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        slug("Upstream rate limits, shared by every replica"),
        "upstream-rate-limits-shared-by-every-replica"
    );
    assert_eq!(
        slug("Recipe: RingCentral (JWT flow)"),
        "recipe-ringcentral-jwt-flow"
    );
    assert_eq!(
        slug("Scrape `:9090/metrics`".replace('`', "").as_str()),
        "scrape-9090metrics"
    );
    let a = anchors("# A\n## B\n```\n# not a heading\n```\n## B\n");
    assert_eq!(a.into_iter().collect::<Vec<_>>(), ["a", "b", "b-1"]);
    assert_eq!(
        links("see [x](docs/a.md#b) and `[y](not)` and [z](https://e.com \"t\")"),
        ["docs/a.md#b", "https://e.com"]
    );
}
