//! The Grafana dashboards deploy/dashboards ships (docs/observability.md,
//! Dashboards), read as Grafana reads them: every panel, rows' nested ones
//! included, every target's PromQL, every template variable; and Grafana's
//! variable syntax (`$name`, `${name}`, `[[name]]`) substituted, so a test
//! can run each panel's query against a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{Error, Result};

/// What every panel and target names as its data source: the dashboard's
/// `datasource` variable.
pub const DATASOURCE_UID: &str = "${datasource}";

/// deploy/dashboards in this checkout.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/dashboards")
}

/// One dashboard file, parsed.
pub struct Dashboard {
    /// Its file name in [`dir`].
    pub file: String,
    pub json: Value,
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct Target {
    pub panel_id: u64,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
    pub datasource: Value,
}

/// A template variable.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub kind: String,
    /// A `query` variable's query (`label_values(...)`); `None` for other
    /// kinds.
    pub query: Option<String>,
    /// Several values at once (Grafana joins them as a regex).
    pub multi: bool,
}

/// Every `*.json` of [`dir`], by file name.
pub fn load() -> Result<Vec<Dashboard>> {
    let dir = dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(Error::io(&dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
            let json = serde_json::from_str(&text)
                .map_err(|e| Error::decode(path.display().to_string(), e))?;
            let file = path.file_name().unwrap_or_default();
            Ok(Dashboard {
                file: file.to_string_lossy().into_owned(),
                json,
            })
        })
        .collect()
}

impl Dashboard {
    pub fn title(&self) -> &str {
        self.json["title"].as_str().unwrap_or_default()
    }

    pub fn uid(&self) -> &str {
        self.json["uid"].as_str().unwrap_or_default()
    }

    /// Every panel, depth first: rows, then the panels a collapsed row
    /// holds in its own `panels`.
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for panel in panels.as_array().into_iter().flatten() {
                out.push(panel);
                walk(&panel["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Every target of every panel.
    pub fn targets(&self) -> Vec<Target> {
        self.panels()
            .into_iter()
            .flat_map(|panel| {
                let targets = panel["targets"].as_array().cloned().unwrap_or_default();
                targets.into_iter().map(move |t| Target {
                    panel_id: panel["id"].as_u64().unwrap_or_default(),
                    panel: panel["title"].as_str().unwrap_or_default().to_string(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                    expr: t["expr"].as_str().unwrap_or_default().to_string(),
                    datasource: t["datasource"].clone(),
                })
            })
            .collect()
    }

    /// The template variables, in order (a later one may use an earlier).
    pub fn variables(&self) -> Vec<Variable> {
        let list = self.json["templating"]["list"].as_array();
        list.into_iter()
            .flatten()
            .map(|v| {
                let kind = v["type"].as_str().unwrap_or_default().to_string();
                let query = v["query"]["query"].as_str().or_else(|| v["query"].as_str());
                Variable {
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    query: query.filter(|_| kind == "query").map(str::to_string),
                    kind,
                    multi: v["multi"].as_bool().unwrap_or(false),
                }
            })
            .collect()
    }

    /// What is wrong with it as a dashboard of weft's: no `datasource`
    /// variable of type prometheus, a duplicate panel id or title, a panel
    /// without queries, a target or query variable not on
    /// `${datasource}`, a query variable that is not `label_values(...)`,
    /// or a `$variable` that is not defined.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.title().is_empty() || self.uid().is_empty() {
            problems.push("no title or uid".to_string());
        }
        if !self.json["schemaVersion"].is_u64() {
            problems.push("no schemaVersion".to_string());
        }
        let variables = self.variables();
        if !variables
            .iter()
            .any(|v| v.name == "datasource" && v.kind == "datasource")
            || self.json["templating"]["list"][0]["query"] != "prometheus"
        {
            problems.push("the first variable is not `datasource` of type prometheus".into());
        }
        let (mut ids, mut titles) = (BTreeSet::new(), BTreeSet::new());
        for panel in self.panels() {
            let title = panel["title"].as_str().unwrap_or_default();
            if !ids.insert(panel["id"].as_u64().unwrap_or_default()) {
                problems.push(format!("panel id {} twice", panel["id"]));
            }
            if title.is_empty() || !titles.insert(title) {
                problems.push(format!("panel title {title:?} empty or twice"));
            }
            let row = panel["type"] == "row";
            let targets = panel["targets"].as_array().map_or(0, Vec::len);
            if !row && targets == 0 {
                problems.push(format!("panel {title:?} has no query"));
            }
            if !row && panel["datasource"]["uid"] != DATASOURCE_UID {
                problems.push(format!("panel {title:?} is not on {DATASOURCE_UID}"));
            }
        }
        let defined: BTreeSet<&str> = variables.iter().map(|v| v.name.as_str()).collect();
        for target in self.targets() {
            let at = format!("panel {:?} {}", target.panel, target.ref_id);
            if target.datasource["uid"] != DATASOURCE_UID
                || target.datasource["type"] != "prometheus"
            {
                problems.push(format!("{at}: datasource {}", target.datasource));
            }
            if target.expr.trim().is_empty() {
                problems.push(format!("{at}: no expr"));
            }
            for name in referenced(&target.expr) {
                if !name.starts_with("__") && !defined.contains(name.as_str()) {
                    problems.push(format!("{at}: ${name} is not a variable"));
                }
            }
        }
        for v in variables.iter().filter(|v| v.kind == "query") {
            let var = &self.json["templating"]["list"]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["name"] == v.name.as_str()))
                .cloned()
                .unwrap_or_default();
            if var["datasource"]["uid"] != DATASOURCE_UID {
                problems.push(format!("variable {} is not on {DATASOURCE_UID}", v.name));
            }
            if v.query.as_deref().and_then(label_values).is_none() {
                problems.push(format!("variable {}: not label_values(...)", v.name));
            }
        }
        problems
    }
}

/// The variables `text` names (`$name`, `${name}`, `[[name]]`).
pub fn referenced(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices('$') {
        let rest = &text[i + 1..];
        let name = ident(rest.strip_prefix('{').unwrap_or(rest));
        if !name.is_empty() {
            names.insert(name);
        }
    }
    for (i, _) in text.match_indices("[[") {
        let name = ident(&text[i + 2..]);
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// `text` with each variable of `values` substituted in all three of
/// Grafana's syntaxes; longer names first, so `$pod` never eats
/// `$pod_name`.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = text.to_string();
    for name in names {
        let value = &values[name];
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("[[{name}]]"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// `label_values(selector, label)` (or `label_values(label)`) as its
/// selector and label.
pub fn label_values(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((selector, label)) => Some((selector.trim().to_string(), label.trim().to_string())),
        None => Some((String::new(), inner.trim().to_string())),
    }
}

/// PromQL whose instant vector holds one series per value of a
/// `label_values` variable: `count by (label) (selector)`.
pub fn values_promql(selector: &str, label: &str) -> String {
    let selector = if selector.is_empty() {
        format!("{{{label}!=\"\"}}")
    } else {
        selector.to_string()
    };
    format!("count by ({label}) ({selector})")
}

/// Several values of a multi-value variable as Grafana writes them for
/// Prometheus: a regex alternation.
pub fn regex_of(values: &[String]) -> String {
    if values.len() == 1 {
        values[0].clone()
    } else {
        format!("({})", values.join("|"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_found_and_substituted_in_every_syntax() {
        let expr = r#"rate(x{pod=~"$pod", ns="${namespace}", n="[[node]]"}[$__rate_interval])"#;
        let names: Vec<String> = referenced(expr).into_iter().collect();
        assert_eq!(names, ["__rate_interval", "namespace", "node", "pod"]);
        let values: BTreeMap<String, String> = [
            ("pod", "a"),
            ("namespace", "shop"),
            ("node", "node-2"),
            ("__rate_interval", "1m"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            substitute(expr, &values),
            r#"rate(x{pod=~"a", ns="shop", n="node-2"}[1m])"#
        );
    }

    #[test]
    fn label_values_queries_become_counts_by_their_label() {
        let (selector, label) = label_values(r#"label_values(up{pod=~"z-.*"}, node)"#).unwrap();
        assert_eq!(
            values_promql(&selector, &label),
            r#"count by (node) (up{pod=~"z-.*"})"#
        );
        assert_eq!(label_values("label_values(pod)").unwrap().1, "pod");
        assert!(label_values("query_result(up)").is_none());
        assert_eq!(regex_of(&["a".into(), "b".into()]), "(a|b)");
    }

    #[test]
    fn the_shipped_dashboards_are_well_formed() {
        let dashboards = load().expect("deploy/dashboards");
        assert_eq!(dashboards.len(), 5, "five dashboards");
        for d in &dashboards {
            assert_eq!(d.problems(), Vec::<String>::new(), "{}", d.file);
            assert!(!d.targets().is_empty(), "{}", d.file);
        }
    }
}
