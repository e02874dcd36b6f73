//! The page's two drawings, as SVG coordinates for the template: the nodes as a tree (parents above
//! children, siblings side by side, roots wrapped into bands so a 200-node run stays legible) and one
//! score chart (every scored node, the best so far, the threshold).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::report::stats::Direction;

/// What the drawings need of a node.
pub struct Point {
    pub iter: i64,
    pub parent: Option<i64>,
    pub status: String,
    pub status_class: &'static str,
    pub kind: String,
    pub score: Option<f64>,
    pub score_label: String,
    pub winner: bool,
    pub met: bool,
}

#[derive(Serialize, Default)]
pub struct Diagram {
    pub width: i64,
    pub height: i64,
    /// The node radius, and whether the nodes are packed (smaller labels).
    pub r: i64,
    pub dense: bool,
    pub nodes: Vec<DiagramNode>,
    /// SVG path data of each parent → child link.
    pub edges: Vec<String>,
}

#[derive(Serialize)]
pub struct DiagramNode {
    pub iter: i64,
    pub x: i64,
    pub y: i64,
    pub status: String,
    pub status_class: &'static str,
    pub kind: String,
    pub label: String,
    pub winner: bool,
    pub parent: Option<i64>,
}

/// Horizontal and vertical distance between nodes, the node radius, the most leaf columns in a band;
/// a band wider than the page (a wide tree) packs its columns closer, down to `MIN_DX`.
const DX: i64 = 44;
const MIN_DX: i64 = 28;
const DY: i64 = 58;
const R: i64 = 13;
const MAX_COLS: usize = 22;
const PAGE_W: i64 = 1060;
const MARGIN: i64 = 24;

/// Lay the nodes out as a forest: each leaf takes the next column, a parent sits above the middle of its
/// children; whole subtrees are placed left to right and wrapped into a new band below when a band is
/// full. A parent that is not a node (not recorded) makes its child a root.
pub fn diagram(points: &[Point]) -> Diagram {
    let known: HashSet<i64> = points.iter().map(|p| p.iter).collect();
    let mut children: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, p) in points.iter().enumerate() {
        match p.parent.filter(|q| known.contains(q) && *q != p.iter) {
            Some(q) => children.entry(q).or_default().push(i),
            None => roots.push(i),
        }
    }
    let index: BTreeMap<i64, usize> = points.iter().enumerate().map(|(i, p)| (p.iter, i)).collect();
    // columns and depth of each node, relative to its subtree; subtrees of the roots are laid out alone
    let mut pos: Vec<Option<(f64, i64)>> = vec![None; points.len()];
    let mut d = Diagram::default();
    let (mut band_y, mut band_cols, mut band_depth, mut widest) = (0i64, 0usize, 0i64, 0usize);
    for &root in &roots {
        let mut local: Vec<(usize, f64, i64)> = Vec::new();
        let mut next = 0usize;
        layout(root, 0, points, &children, &mut next, &mut local, &mut HashSet::new());
        let cols = next.max(1);
        let depth = local.iter().map(|l| l.2).max().unwrap_or(0);
        if band_cols > 0 && band_cols + cols > MAX_COLS {
            band_y += (band_depth + 1) * DY;
            band_cols = 0;
            band_depth = 0;
        }
        for (i, x, level) in local {
            pos[i] = Some((band_cols as f64 + x, band_y / DY + level));
        }
        band_cols += cols;
        widest = widest.max(band_cols);
        band_depth = band_depth.max(depth);
    }
    let fit = (PAGE_W - 2 * (MARGIN + R)) / (widest.max(2) as i64 - 1);
    let dx = fit.clamp(MIN_DX, DX);
    let r = if dx < 36 { (dx / 2 - 2).max(10) } else { R };
    d.r = r;
    d.dense = dx < 36;
    let at = |i: usize| pos[i].map(|(c, l)| (MARGIN + R + (c * dx as f64).round() as i64, MARGIN + R + l * DY));
    for (i, p) in points.iter().enumerate() {
        let Some((x, y)) = at(i) else { continue };
        if let Some(pi) = p.parent.and_then(|q| index.get(&q)).filter(|_| pos[i].is_some()) {
            if let Some((px, py)) = at(*pi).filter(|_| p.parent != Some(p.iter)) {
                // the elbow runs just above the child, clear of the parent's score label
                // the parent's stem starts under its score label
                let mid = (y - r - 8).max(py + r + 18);
                d.edges.push(format!("M{px} {} V{mid} H{x} V{}", py + r + 17, y - r));
            }
        }
        d.nodes.push(DiagramNode {
            iter: p.iter,
            x,
            y,
            status: p.status.clone(),
            status_class: p.status_class,
            kind: p.kind.clone(),
            label: p.score_label.clone(),
            winner: p.winner,
            parent: p.parent,
        });
    }
    d.width = 2 * (MARGIN + R) + (widest.max(1) as i64 - 1) * dx + 20;
    d.height = 2 * (MARGIN + R) + band_y + band_depth * DY + 8;
    d
}

/// Post-order layout of one subtree: leaves take consecutive columns, parents the middle of their
/// children (the first child's column when the subtree is wider than a page). `seen` guards against a cycle in hand-edited parents.
#[allow(clippy::too_many_arguments)]
fn layout(
    i: usize,
    level: i64,
    points: &[Point],
    children: &BTreeMap<i64, Vec<usize>>,
    next: &mut usize,
    out: &mut Vec<(usize, f64, i64)>,
    seen: &mut HashSet<usize>,
) -> f64 {
    if !seen.insert(i) {
        return *next as f64;
    }
    let kids: Vec<usize> = children.get(&points[i].iter).cloned().unwrap_or_default();
    let start = *next;
    let x = if kids.is_empty() {
        let x = *next as f64;
        *next += 1;
        x
    } else {
        let xs: Vec<f64> = kids.iter().map(|&k| layout(k, level + 1, points, children, next, out, seen)).collect();
        if *next - start > MAX_COLS {
            // a subtree wider than the page: the parent stays above its first child, in view
            xs[0]
        } else {
            (xs[0] + xs[xs.len() - 1]) / 2.0
        }
    };
    out.push((i, x, level));
    x
}

#[derive(Serialize, Default)]
pub struct Chart {
    pub width: i64,
    pub height: i64,
    /// Plot area.
    pub left: i64,
    pub top: i64,
    pub plot_w: i64,
    pub plot_h: i64,
    pub points: Vec<ChartPoint>,
    /// The best-so-far line, as SVG polyline points.
    pub best_line: String,
    pub threshold_y: Option<f64>,
    pub threshold_label: String,
    pub y_ticks: Vec<Tick>,
    pub x_ticks: Vec<Tick>,
    pub scored: usize,
}

#[derive(Serialize)]
pub struct ChartPoint {
    pub iter: i64,
    pub x: f64,
    pub y: f64,
    pub label: String,
    pub met: bool,
    pub best: bool,
}

#[derive(Serialize)]
pub struct Tick {
    pub at: f64,
    pub label: String,
}

/// Every scored node in iteration order, the best score so far after each node, and the threshold.
pub fn chart(points: &[Point], threshold: Option<f64>, direction: Direction) -> Chart {
    let mut order: Vec<&Point> = points.iter().collect();
    order.sort_by_key(|p| p.iter);
    // as wide as the nodes need (a phone shows a small run whole), at most 720
    let span_n = order.last().map_or(1, |p| p.iter) - order.first().map_or(1, |p| p.iter) + 1;
    let w = (span_n as f64 * 36.0 + 90.0).clamp(360.0, 720.0);
    let (h, left, top, right, bottom) = (220.0, 48.0, 14.0, 18.0, 32.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let scored: Vec<(i64, f64, bool)> =
        order.iter().filter_map(|p| p.score.filter(|s| s.is_finite()).map(|s| (p.iter, s, p.met))).collect();
    let mut c = Chart {
        width: w as i64,
        height: h as i64,
        left: left as i64,
        top: top as i64,
        plot_w: pw as i64,
        plot_h: ph as i64,
        scored: scored.len(),
        ..Default::default()
    };
    if scored.is_empty() {
        return c;
    }
    let ths = threshold.filter(|t| t.is_finite());
    let mut lo = scored.iter().map(|p| p.1).chain(ths).fold(f64::INFINITY, f64::min);
    let mut hi = scored.iter().map(|p| p.1).chain(ths).fold(f64::NEG_INFINITY, f64::max);
    let span = hi - lo;
    if span < 1e-9 {
        let pad = if lo.abs() > 1e-9 { lo.abs() * 0.05 } else { 0.5 };
        (lo, hi) = (lo - pad, hi + pad);
    } else {
        (lo, hi) = (lo - span * 0.06, hi + span * 0.06);
    }
    let first = order.first().map_or(1, |p| p.iter);
    let last = order.last().map_or(1, |p| p.iter);
    let x = |it: i64| {
        if last == first {
            left + pw / 2.0
        } else {
            left + (it - first) as f64 / (last - first) as f64 * pw
        }
    };
    let y = |v: f64| top + ph - (v - lo) / (hi - lo) * ph;
    c.threshold_y = ths.map(y);
    c.threshold_label = ths.map(|t| format!("{t:.4}")).unwrap_or_default();
    // round ticks: a step of 1, 2 or 5 × 10^k, labels with the step's decimals
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-9 {
        c.y_ticks.push(Tick { at: y(v), label: format!("{v:.decimals$}") });
        v += step;
    }
    let n = (last - first + 1).max(1);
    let step = ((n as f64 / 10.0).ceil() as i64).max(1);
    let mut it = first;
    while it <= last {
        c.x_ticks.push(Tick { at: x(it), label: it.to_string() });
        it += step;
    }
    let mut best: Option<f64> = None;
    let mut line = Vec::new();
    for (it, sc, met) in scored {
        let better = best.is_none_or(|b| direction.better(sc, b));
        if better {
            best = Some(sc);
        }
        let b = best.unwrap_or(sc);
        if let Some((_, py)) = line.last().copied() {
            line.push((x(it), py));
        }
        line.push((x(it), y(b)));
        c.points.push(ChartPoint { iter: it, x: x(it), y: y(sc), label: format!("{sc:.4}"), met, best: better });
    }
    c.best_line = line.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ");
    c
}
