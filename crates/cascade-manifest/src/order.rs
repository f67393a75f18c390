//! The one build order of a graph, for manifests and lockfiles alike: inputs first, the
//! smallest ready name first (Kahn's algorithm over a heap), and every cycle found by
//! strongly connected components (petgraph's Tarjan), so a cycle is reported edge by
//! edge. Linear in nodes and edges, but for the heap's log n.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};

/// A graph in build order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ordered<'n> {
    /// Every node that can be built, inputs first; ties go to the smallest name. A node
    /// that takes an input from a cycle is placed as if that input were met (the cycle
    /// is the error, reported once).
    pub order: Vec<&'n str>,
    /// One cycle per strongly connected component that has one, by its smallest name,
    /// each starting there: `[a, b]` is `a` takes `b` as an input and `b` takes `a`.
    pub cycles: Vec<Vec<&'n str>>,
    /// In name order: nodes that take an input that is not a node (directly or through
    /// their inputs), so they can never be built.
    pub unplaced: Vec<&'n str>,
}

/// Orders `inputs` (each node's inputs, in the order written; an input that is not a
/// key is never met).
pub fn build_order<'n>(inputs: &BTreeMap<&'n str, Vec<&'n str>>) -> Ordered<'n> {
    let mut graph: DiGraph<&'n str, ()> = DiGraph::with_capacity(inputs.len(), 0);
    let index: HashMap<&'n str, NodeIndex> =
        inputs.keys().map(|n| (*n, graph.add_node(n))).collect();
    for (n, ins) in inputs {
        for i in ins {
            if let Some(&to) = index.get(i) {
                graph.add_edge(index[n], to, ());
            }
        }
    }

    // Cycles: a component of more than one node, or a node that is its own input.
    let mut in_cycle = vec![false; graph.node_count()];
    let mut cycles = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let looped = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if !looped {
            continue;
        }
        for &n in &scc {
            in_cycle[n.index()] = true;
        }
        cycles.push(cycle_in(&graph, inputs, &scc));
    }
    cycles.sort();

    // Kahn's algorithm over the rest. Inputs in a cycle count as met; an input that is
    // not a node never is.
    let mut waiting = vec![0usize; graph.node_count()];
    let mut users: Vec<Vec<NodeIndex>> = vec![Vec::new(); graph.node_count()];
    for (n, ins) in inputs {
        let at = index[n];
        if in_cycle[at.index()] {
            continue;
        }
        let mut seen: Vec<NodeIndex> = Vec::new();
        for i in ins {
            match index.get(i) {
                Some(&j) if in_cycle[j.index()] => {}
                // The same input twice is one edge.
                Some(&j) if seen.contains(&j) => {}
                Some(&j) => {
                    seen.push(j);
                    waiting[at.index()] += 1;
                    users[j.index()].push(at);
                }
                None => waiting[at.index()] = usize::MAX,
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<&'n str>> = inputs
        .keys()
        .filter(|n| {
            let i = index[*n].index();
            !in_cycle[i] && waiting[i] == 0
        })
        .map(|n| Reverse(*n))
        .collect();
    let mut placed = vec![false; graph.node_count()];
    let mut order = Vec::with_capacity(inputs.len());
    while let Some(Reverse(n)) = ready.pop() {
        let at = index[n];
        placed[at.index()] = true;
        order.push(n);
        for &u in &users[at.index()] {
            let w = &mut waiting[u.index()];
            if *w != usize::MAX {
                *w -= 1;
                if *w == 0 {
                    ready.push(Reverse(graph[u]));
                }
            }
        }
    }
    let unplaced = inputs
        .keys()
        .filter(|n| {
            let i = index[*n].index();
            !placed[i] && !in_cycle[i]
        })
        .copied()
        .collect();
    Ordered {
        order,
        cycles,
        unplaced,
    }
}

/// One cycle inside a strongly connected component: from its smallest name, follow the
/// first input (as written) that stays in the component until a name repeats.
fn cycle_in<'n>(
    graph: &DiGraph<&'n str, ()>,
    inputs: &BTreeMap<&'n str, Vec<&'n str>>,
    scc: &[NodeIndex],
) -> Vec<&'n str> {
    let members: Vec<&'n str> = scc.iter().map(|&n| graph[n]).collect();
    let Some(&start) = members.iter().min() else {
        return Vec::new();
    };
    let mut path: Vec<&'n str> = Vec::new();
    let mut cur = start;
    loop {
        if let Some(pos) = path.iter().position(|p| *p == cur) {
            let mut cycle = path.split_off(pos);
            // Start at the smallest name, whatever the walk met first.
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(first);
            return cycle;
        }
        path.push(cur);
        // Every member of a component has an input in it, so this always finds one.
        match inputs
            .get(cur)
            .and_then(|ins| ins.iter().find(|i| members.contains(i)))
        {
            Some(next) => cur = next,
            None => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph<'n>(pairs: &[(&'n str, &[&'n str])]) -> BTreeMap<&'n str, Vec<&'n str>> {
        pairs.iter().map(|(n, ins)| (*n, ins.to_vec())).collect()
    }

    #[test]
    fn inputs_first_and_the_smallest_ready_name_first() {
        let g = graph(&[
            ("app", &["lib", "b"]),
            ("b", &[]),
            ("lib", &["b"]),
            ("a", &[]),
        ]);
        let o = build_order(&g);
        assert_eq!(o.order, ["a", "b", "lib", "app"]);
        assert!(o.cycles.is_empty() && o.unplaced.is_empty());
    }

    #[test]
    fn cycles_are_found_once_each_and_their_users_still_placed() {
        let g = graph(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("self", &["self"]),
            ("user", &["a", "base"]),
            ("base", &[]),
            ("x", &["y"]),
            ("y", &["x", "a"]),
        ]);
        let o = build_order(&g);
        assert_eq!(
            o.cycles,
            [vec!["a", "b", "c"], vec!["self"], vec!["x", "y"]]
        );
        assert_eq!(o.order, ["base", "user"]);
        assert!(o.unplaced.is_empty());
    }

    #[test]
    fn an_input_that_is_not_a_node_is_never_met() {
        let g = graph(&[
            ("a", &["ghost"]),
            ("b", &["a"]),
            ("c", &[]),
            ("d", &["c", "c"]),
        ]);
        let o = build_order(&g);
        assert_eq!(o.order, ["c", "d"]);
        assert_eq!(o.unplaced, ["a", "b"]);
    }

    /// A long chain and a wide fan are ordered in time linear in their size (this would
    /// take minutes with a rescan per step).
    #[test]
    fn big_graphs_are_ordered() {
        let names: Vec<String> = (0..100_000).map(|i| format!("n{i:06}")).collect();
        let mut g: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let ins = if i == 0 {
                vec![]
            } else {
                vec![names[i - 1].as_str()]
            };
            g.insert(n, ins);
        }
        let o = build_order(&g);
        assert_eq!(o.order.len(), names.len());
        assert_eq!(o.order.first(), Some(&"n000000"));
        assert_eq!(o.order.last(), Some(&"n099999"));
    }
}
