//! The exchange's plan, fixed before step 1 and the same on every rank:
//! parameters in name order (candle's VarMap iterates a HashMap, so its order
//! differs between processes), or, to overlap the exchange with backward, in
//! the order backward finishes them (last stage first, by name within a
//! stage: PyTorch DDP's reverse order); laid end to end and cut into buckets
//! of a fixed number of elements; a bucket boundary may fall inside a tensor.

/// A slice of one parameter that lives in one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub param: usize,
    pub param_offset: usize,
    pub bucket_offset: usize,
    pub len: usize,
}

/// The indices of `names` in exchange order: by name, the same on every rank.
pub fn exchange_order(names: &[&str]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(names[b]));
    order
}

/// The indices of `names` in the order backward finishes their gradients:
/// `stage_of[i]` descending, by name within a stage; parameters that get no
/// gradient (`None`) last, by name. The same on every rank.
pub fn overlap_order(names: &[&str], stage_of: &[Option<usize>]) -> Vec<usize> {
    assert_eq!(names.len(), stage_of.len());
    let mut order: Vec<usize> = (0..names.len()).collect();
    // `None` sorts below every `Some`, so the reversed stage puts it last.
    order.sort_by(|&a, &b| stage_of[b].cmp(&stage_of[a]).then(names[a].cmp(names[b])));
    order
}

/// Cuts `sizes` (elements per parameter, in exchange order) into buckets of
/// `bucket_elems` elements; the last bucket holds the rest.
pub fn plan_buckets(sizes: &[usize], bucket_elems: usize) -> Vec<Vec<Piece>> {
    plan_buckets_first(sizes, bucket_elems, bucket_elems)
}

/// As `plan_buckets`, with a first bucket of `first_elems` (a small first
/// bucket starts the exchange early in backward, as DDP's does).
pub fn plan_buckets_first(sizes: &[usize], first_elems: usize, bucket_elems: usize) -> Vec<Vec<Piece>> {
    assert!(bucket_elems > 0 && first_elems > 0);
    let mut buckets: Vec<Vec<Piece>> = vec![];
    let mut current: Vec<Piece> = vec![];
    let mut filled = 0;
    for (param, &size) in sizes.iter().enumerate() {
        let mut offset = 0;
        while offset < size {
            let capacity = if buckets.is_empty() { first_elems } else { bucket_elems };
            let len = (size - offset).min(capacity - filled);
            current.push(Piece { param, param_offset: offset, bucket_offset: filled, len });
            offset += len;
            filled += len;
            if filled == capacity {
                buckets.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

/// A plan as the exchange uses it: the parameters' exchange order (indices
/// into what was planned), its buckets, and for a plan overlapped with
/// backward each parameter's stage in that order and the stage after which
/// each bucket is complete (both empty otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub order: Vec<usize>,
    pub buckets: Vec<Vec<Piece>>,
    pub stage_of: Vec<Option<usize>>,
    pub ready: Vec<usize>,
}

/// Plans `names` (with `sizes` elements each) in buckets of `bucket_elems`:
/// by name, or, given each parameter's stage and a first bucket's size, in
/// the order backward finishes them.
pub fn plan(names: &[&str], sizes: &[usize], bucket_elems: usize, overlap: Option<(&[Option<usize>], usize)>) -> Plan {
    let order = match overlap {
        Some((stages, _)) => overlap_order(names, stages),
        None => exchange_order(names),
    };
    let in_order: Vec<usize> = order.iter().map(|&i| sizes[i]).collect();
    match overlap {
        Some((stages, first_elems)) => {
            let buckets = plan_buckets_first(&in_order, first_elems, bucket_elems);
            let stage_of: Vec<Option<usize>> = order.iter().map(|&i| stages[i]).collect();
            let ready = ready_stages(&buckets, &stage_of);
            Plan { order, buckets, stage_of, ready }
        }
        None => Plan { order, buckets: plan_buckets(&in_order, bucket_elems), stage_of: vec![], ready: vec![] },
    }
}

/// Elements in each bucket of a plan.
pub fn bucket_lens(plan: &[Vec<Piece>]) -> Vec<usize> {
    plan.iter().map(|pieces| pieces.iter().map(|p| p.len).sum()).collect()
}

/// For each bucket, the stage after whose backward all of its gradients
/// exist: the lowest stage among its pieces (`stage_of` in exchange order;
/// a parameter without a gradient counts as stage 0, ready at the end).
pub fn ready_stages(plan: &[Vec<Piece>], stage_of: &[Option<usize>]) -> Vec<usize> {
    plan.iter().map(|pieces| pieces.iter().map(|p| stage_of[p.param].unwrap_or(0)).min().unwrap_or(0)).collect()
}

/// The plan as text (parameter names in exchange order, then bucket
/// lengths): what the start-up check compares across ranks before any
/// collective depends on it. `names` and `sizes` are in exchange order.
pub fn layout_text(names: &[&str], sizes: &[usize], bucket_elems: usize) -> String {
    let lens: Vec<String> = bucket_lens(&plan_buckets(sizes, bucket_elems)).iter().map(|l| l.to_string()).collect();
    format!("{} | {}", names.join(","), lens.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cut_inside_and_between_tensors() {
        let plan = plan_buckets(&[3, 5, 2], 4);
        assert_eq!(bucket_lens(&plan), vec![4, 4, 2]);
        assert_eq!(
            plan[0],
            vec![
                Piece { param: 0, param_offset: 0, bucket_offset: 0, len: 3 },
                Piece { param: 1, param_offset: 0, bucket_offset: 3, len: 1 }
            ]
        );
        assert_eq!(plan[1], vec![Piece { param: 1, param_offset: 1, bucket_offset: 0, len: 4 }]);
        assert_eq!(plan[2], vec![Piece { param: 2, param_offset: 0, bucket_offset: 0, len: 2 }]);
        // A boundary exactly between tensors, and one big bucket.
        assert_eq!(plan_buckets(&[4, 4], 4).len(), 2);
        assert_eq!(plan_buckets(&[4, 4], 100).len(), 1);
        assert!(plan_buckets(&[0, 0], 4).is_empty());
    }

    #[test]
    fn a_first_bucket_of_its_own_size() {
        let plan = plan_buckets_first(&[3, 5, 2], 2, 4);
        assert_eq!(bucket_lens(&plan), vec![2, 4, 4]);
        assert_eq!(plan[1][0], Piece { param: 0, param_offset: 2, bucket_offset: 0, len: 1 });
        // A first bucket larger than the rest, and one that takes everything.
        assert_eq!(bucket_lens(&plan_buckets_first(&[10], 6, 3)), vec![6, 3, 1]);
        assert_eq!(bucket_lens(&plan_buckets_first(&[10], 20, 3)), vec![10]);
    }

    #[test]
    fn overlap_order_is_last_stage_first_and_unused_last() {
        let names = ["a", "b", "c", "d", "e"];
        let stages = [Some(0), Some(2), None, Some(2), Some(1)];
        assert_eq!(overlap_order(&names, &stages), vec![1, 3, 4, 0, 2]);
        // Buckets over that order: each is ready when its lowest stage is done.
        let in_order = [Some(2), Some(2), Some(1), Some(0), None];
        let plan = plan_buckets(&[1, 1, 1, 1, 1], 2);
        assert_eq!(ready_stages(&plan, &in_order), vec![2, 0, 0]);
        let plan = plan_buckets(&[1, 1, 1, 1, 1], 1);
        assert_eq!(ready_stages(&plan, &in_order), vec![2, 2, 1, 0, 0]);
    }

    #[test]
    fn order_is_by_name_and_the_layout_names_it() {
        assert_eq!(exchange_order(&["b", "a", "c"]), vec![1, 0, 2]);
        assert_eq!(layout_text(&["a", "b"], &[3, 5], 4), "a,b | 4,4");
    }
}
