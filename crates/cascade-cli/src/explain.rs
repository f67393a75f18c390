//! Text renderings of a plan: `cascade plan`, `cascade why`, `cascade graph` (text and
//! Graphviz DOT). The JSON forms are the `cascade` crate's types, serialized as they are.

use std::fmt::Write as _;

use cascade::{Plan, PlanNode, PlanState, Why, WhyNode};

/// `develop 1a2b3c4` in branch mode, `1.2.0 1a2b3c4` in version mode.
fn at(n: &PlanNode) -> String {
    format!(
        "{} {}",
        n.r#ref.as_deref().unwrap_or(&n.version),
        &n.commit[..n.commit.len().min(7)]
    )
}

fn baseline_line(p: &Plan) -> String {
    match &p.baseline {
        Some(b) => format!("compared with {}", b.display()),
        None => "no earlier lockfile to compare with".to_string(),
    }
}

pub fn plan_text(p: &Plan) -> String {
    let width = p.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
    let mut s = format!("plan for {} ({})\n", p.environment, baseline_line(p));
    for w in &p.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    for n in &p.nodes {
        let detail = match n.state {
            PlanState::Cached => match &n.output {
                Some(o) if n.reasons.is_empty() => format!("reuses {}", short(o)),
                Some(o) => format!("reuses {}; differs from the baseline:", short(o)),
                None => String::new(),
            },
            PlanState::Remote => match &n.output {
                Some(o) => format!("from the remote cache: {}", short(o)),
                None => String::new(),
            },
            PlanState::Rebuild => String::new(),
            PlanState::Pending => {
                let mut d = format!("waits for {}", n.waits_for.join(", "));
                if n.early_cutoff {
                    d.push_str(" (early cutoff may spare it)");
                }
                d
            }
        };
        let line = format!(
            "  {:<8} {:<width$}  {}  {detail}",
            n.state.to_string(),
            n.name,
            at(n)
        );
        let _ = writeln!(s, "{}", line.trim_end());
        for r in &n.reasons {
            let _ = writeln!(s, "           - {}", r.message);
        }
    }
    let _ = write!(
        s,
        "cached {}, rebuild {}, pending {}",
        p.cached, p.rebuild, p.pending
    );
    if p.remote > 0 {
        let _ = write!(s, ", from the remote cache {}", p.remote);
    }
    s
}

fn short(d: &impl std::fmt::Display) -> String {
    cascade::short_digest(d)
}

pub fn why_text(w: &Why, plan: &Plan) -> String {
    let mut s = format!("why {} ({})\n", w.chain.name, baseline_line(plan));
    why_node(&mut s, &w.chain, plan, 0);
    if w.root_causes.is_empty() {
        s.push_str("\nno root cause: nothing differs from the baseline");
    } else {
        s.push_str("\nroot cause:");
        for rc in &w.root_causes {
            for r in &rc.reasons {
                let _ = write!(s, "\n  {}: {}", rc.name, r.message);
            }
        }
    }
    s
}

fn why_node(s: &mut String, n: &WhyNode, plan: &Plan, depth: usize) {
    let pad = "  ".repeat(depth);
    if n.see_above {
        let _ = writeln!(s, "{pad}{} (see above)", n.name);
        return;
    }
    let waits = plan
        .node(&n.name)
        .map(|p| p.waits_for.join(", "))
        .unwrap_or_default();
    let state = match (n.state, n.reasons.is_empty()) {
        (PlanState::Cached, true) => "is cached and unchanged since the baseline".to_string(),
        (PlanState::Cached, false) => "is cached, but differs from the baseline".to_string(),
        (PlanState::Remote, _) => "is in the remote cache: a build downloads it".to_string(),
        (PlanState::Rebuild, _) => "rebuilds".to_string(),
        (PlanState::Pending, _) => format!("is pending: it waits for {waits}"),
    };
    let _ = writeln!(s, "{pad}{} {state}", n.name);
    for r in &n.reasons {
        let _ = writeln!(s, "{pad}  - {}", r.message);
    }
    for b in &n.because {
        why_node(s, b, plan, depth + 1);
    }
}

pub fn graph_text(p: &Plan) -> String {
    let width = p.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
    let mut s = format!(
        "{}: {} component{} in build order\n",
        p.environment,
        p.nodes.len(),
        if p.nodes.len() == 1 { "" } else { "s" }
    );
    for n in &p.nodes {
        let inputs = if n.inputs.is_empty() {
            String::new()
        } else {
            format!("  ← {}", n.inputs.join(", "))
        };
        let line = format!(
            "  {:<width$}  {:<8} {}{inputs}",
            n.name,
            n.state.to_string(),
            at(n)
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s.trim_end().to_string()
}

/// Graphviz DOT, upstream → downstream, each node filled by its plan state.
pub fn graph_dot(p: &Plan) -> String {
    let mut s = format!("digraph {} {{\n", quote(&p.environment));
    s.push_str("  rankdir=LR;\n");
    s.push_str("  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
    for n in &p.nodes {
        let (fill, border) = match n.state {
            PlanState::Cached => ("#c8e6c9", "#2e7d32"),
            PlanState::Remote => ("#bbdefb", "#1565c0"),
            PlanState::Rebuild => ("#ffcdd2", "#c62828"),
            PlanState::Pending => ("#fff9c4", "#f9a825"),
        };
        let label = format!("{}\n{}\n{}", n.name, at(n), n.state);
        let tooltip: Vec<&str> = n.reasons.iter().map(|r| r.message.as_str()).collect();
        let _ = writeln!(
            s,
            "  {} [label={}, fillcolor={}, color={}, tooltip={}, class={}];",
            quote(&n.name),
            quote(&label),
            quote(fill),
            quote(border),
            quote(&tooltip.join("\n")),
            quote(&n.state.to_string()),
        );
    }
    for n in &p.nodes {
        for i in &n.inputs {
            let _ = writeln!(s, "  {} -> {};", quote(i), quote(&n.name));
        }
    }
    s.push('}');
    s
}

/// A DOT double-quoted string: `"` and `\` escaped, newlines as `\n`.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
