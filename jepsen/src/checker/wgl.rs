//! Linearizability by the Wing–Gong–Lowe search: try to linearize, at each point, any pending
//! operation whose call has happened, backtracking when an operation's return is reached
//! before it was linearized. Lowe's memoisation skips any (set of linearized ops, model state)
//! already explored, which keeps the search polynomial on the histories this harness produces.
//!
//! The caller partitions the history per object (P-compositionality) and passes one object's
//! operations at a time. An operation whose outcome is unknown (`info`) has its return at
//! infinity: it may take effect at any point after its call, or never (the model returns both
//! states). The search is bounded by `STEPS_MAX`; past that the verdict is `Unknown`, never a
//! silent pass.

use std::collections::HashSet;
use std::hash::Hash;

use crate::history::Pair;

/// Most search steps for one object before the verdict is `Unknown`.
pub const STEPS_MAX: u64 = 20_000_000;

/// A sequential specification of one object.
pub trait Model {
    type State: Clone + Eq + Hash + std::fmt::Debug;
    fn init(&self) -> Self::State;
    /// The states the object can be in after `op` takes effect in `state` with the outcome
    /// recorded for it; empty if that outcome is impossible in `state`.
    fn step(&self, state: &Self::State, op: &Pair<'_>) -> Vec<Self::State>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the outcomes. `stuck_op` is an op id whose completion could not be
    /// explained at the deepest point the search reached.
    NotLinearizable {
        stuck_op: u64,
        linearized: usize,
    },
    Unknown(String),
}

const NIL: usize = usize::MAX;

struct Node {
    prev: usize,
    next: usize,
    /// Index into the ops slice.
    op: usize,
    /// For a call: its return node.
    ret: Option<usize>,
}

struct Frame<S> {
    call: usize,
    before: S,
    candidates: Vec<S>,
    next_candidate: usize,
}

pub fn check<M: Model>(model: &M, ops: &[Pair<'_>]) -> Verdict {
    let n = ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events in real-time order; at equal times calls first (treated as concurrent).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, p) in ops.iter().enumerate() {
        events.push((p.invoke.time_us, false, i));
        events.push((p.end_us(), true, i));
    }
    events.sort();
    // Node 0 is the head sentinel.
    let mut nodes: Vec<Node> = vec![Node { prev: NIL, next: NIL, op: 0, ret: None }];
    let mut call_node = vec![0usize; n];
    for (k, &(_, is_return, i)) in events.iter().enumerate() {
        let id = k + 1;
        let prev = id - 1;
        nodes[prev].next = id;
        nodes.push(Node { prev, next: NIL, op: i, ret: None });
        if is_return {
            let call = call_node[i];
            nodes[call].ret = Some(id);
        } else {
            call_node[i] = id;
        }
    }

    fn unlink(nodes: &mut [Node], id: usize) {
        let (p, nx) = (nodes[id].prev, nodes[id].next);
        nodes[p].next = nx;
        if nx != NIL {
            nodes[nx].prev = p;
        }
    }
    fn relink(nodes: &mut [Node], id: usize) {
        let (p, nx) = (nodes[id].prev, nodes[id].next);
        nodes[p].next = id;
        if nx != NIL {
            nodes[nx].prev = id;
        }
    }
    let lift = |nodes: &mut Vec<Node>, call: usize| {
        unlink(nodes, call);
        if let Some(r) = nodes[call].ret {
            unlink(nodes, r);
        }
    };
    let unlift = |nodes: &mut Vec<Node>, call: usize| {
        if let Some(r) = nodes[call].ret {
            relink(nodes, r);
        }
        relink(nodes, call);
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut state = model.init();
    let mut entry = nodes[0].next;
    let mut steps = 0u64;
    let mut deepest = (0usize, 0u64);

    // Tries `candidates[from..]` for the call at `call`; on success pushes a frame and lifts.
    macro_rules! try_from {
        ($call:expr, $before:expr, $candidates:expr, $from:expr) => {{
            let call: usize = $call;
            let op = nodes[call].op;
            let mut taken = false;
            let candidates: Vec<M::State> = $candidates;
            for (k, cand) in candidates.iter().enumerate().skip($from) {
                let mut bits = linearized.clone();
                bits[op / 64] |= 1u64 << (op % 64);
                if cache.insert((bits.clone(), cand.clone())) {
                    linearized = bits;
                    state = cand.clone();
                    stack.push(Frame {
                        call,
                        before: $before,
                        candidates: candidates.clone(),
                        next_candidate: k + 1,
                    });
                    lift(&mut nodes, call);
                    taken = true;
                    break;
                }
            }
            taken
        }};
    }

    loop {
        if nodes[0].next == NIL {
            return Verdict::Linearizable;
        }
        steps += 1;
        if steps > STEPS_MAX {
            return Verdict::Unknown(format!("search gave up after {STEPS_MAX} steps"));
        }
        let is_call = entry != NIL && nodes[entry].ret.is_some();
        if is_call {
            let candidates = model.step(&state, &ops[nodes[entry].op]);
            let before = state.clone();
            if try_from!(entry, before, candidates, 0) {
                entry = nodes[0].next;
            } else {
                entry = nodes[entry].next;
            }
            continue;
        }
        // A return (or the end) reached before its op was linearized: backtrack.
        if entry != NIL && stack.len() >= deepest.0 {
            deepest = (stack.len(), ops[nodes[entry].op].invoke.op);
        }
        let Some(frame) = stack.pop() else {
            return Verdict::NotLinearizable { stuck_op: deepest.1, linearized: deepest.0 };
        };
        let op = nodes[frame.call].op;
        linearized[op / 64] &= !(1u64 << (op % 64));
        unlift(&mut nodes, frame.call);
        state = frame.before.clone();
        if try_from!(frame.call, frame.before, frame.candidates, frame.next_candidate) {
            entry = nodes[0].next;
        } else {
            entry = nodes[frame.call].next;
        }
    }
}
