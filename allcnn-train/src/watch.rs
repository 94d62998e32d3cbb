//! The class-map watch: steps whose examples had every logit 0, class maps
//! silent step after step ([`DeadWatch`], what stops a run with
//! [`TrainError::DeadClassMaps`](crate::TrainError::DeadClassMaps)), and the
//! epoch-end warnings about a stuck loss or silent maps. docs/training.md,
//! "The fragile start", says why the paper's protocol needs it.

use crate::observer::EpochRecord;

/// Percent of a step's examples with every logit 0 from which the step
/// counts as dead. Not all of them: a run that has died keeps a few
/// examples whose input still reaches a live unit (a batch-256 run on
/// CIFAR-10 kept a few per batch for 200 steps with its loss pinned at ln
/// 10), while a run that lives has almost none from its first steps on
/// (0-5% per epoch in the runs of docs/training.md).
const DEAD_STEP_PERCENT: u64 = 95;

/// Whether a step with `dead` of `n` examples dead counts as dead.
pub(crate) fn mostly_dead(dead: u64, n: u64) -> bool {
    n > 0 && dead * 100 >= DEAD_STEP_PERCENT * n
}

/// What died, for messages about
/// [`TrainError::DeadClassMaps`](crate::TrainError::DeadClassMaps):
/// `every class map` when `classes` is empty, else `the class map(s) of A,
/// B`.
pub fn dead_maps_subject(classes: &[String]) -> String {
    match classes {
        [] => "every class map".into(),
        [one] => format!("the class map of {one}"),
        many => format!("the class maps of {}", many.join(", ")),
    }
}

/// Consecutive steps in which (nearly) every example had all logits 0
/// (every class map dead, [`mostly_dead`]), and per class the consecutive
/// steps with examples of it in which its logit was 0 for every example
/// (that class map dead; steps without the class leave its count alone),
/// each with the first of them. Not checkpointed: a resumed run counts
/// afresh.
#[derive(Default)]
pub(crate) struct DeadWatch {
    streak: u64,
    since: u64,
    /// Per class: (streak, first step of it).
    classes: Vec<(u64, u64)>,
}

impl DeadWatch {
    /// Counts `step`; `Some((since, steps, classes))` once `patience` (> 0)
    /// consecutive steps were all dead (`classes` empty), or once some
    /// classes were silent in each of their last `patience` steps with
    /// examples (`(seen, silent)`, both increasing; those classes, and
    /// `since` the latest start among them).
    pub(crate) fn observe(
        &mut self,
        step: u64,
        all_dead: bool,
        (seen, silent): (&[u32], &[u32]),
        patience: u64,
    ) -> Option<(u64, u64, Vec<u32>)> {
        if all_dead {
            if self.streak == 0 {
                self.since = step;
            }
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        if patience == 0 {
            return None;
        }
        if self.streak >= patience {
            return Some((self.since, self.streak, Vec::new()));
        }
        debug_assert!(seen.is_sorted() && silent.is_sorted());
        let needed = seen.last().map_or(0, |&c| c as usize + 1);
        if self.classes.len() < needed {
            self.classes.resize(needed, (0, 0));
        }
        let mut quiet = silent.iter().peekable();
        for &c in seen {
            let (streak, since) = &mut self.classes[c as usize];
            if quiet.next_if(|&&q| q == c).is_some() {
                if *streak == 0 {
                    *since = step;
                }
                *streak += 1;
            } else {
                *streak = 0;
            }
        }
        let dead: Vec<u32> = (0u32..)
            .zip(&self.classes)
            .filter_map(|(c, &(streak, _))| (streak >= patience).then_some(c))
            .collect();
        if dead.is_empty() {
            return None;
        }
        let since = dead
            .iter()
            .map(|&c| self.classes[c as usize].1)
            .max()
            .unwrap_or(step);
        Some((since, patience, dead))
    }
}

/// A warning when the loss sits at chance (`ln classes`), sharper when every
/// class map is dead.
pub(crate) fn stuck_warning(r: &EpochRecord, classes: usize) -> Option<String> {
    let chance = (classes.max(2) as f64).ln();
    if (r.train_loss - chance).abs() > 0.01 * chance {
        return None;
    }
    Some(if r.dead_fraction > 0.99 {
        format!(
            "the run looks stuck in epoch {}: every class map is dead (all logits 0 on {:.0}% of training images) and the loss is pinned at ln({classes}) = {chance:.4}. Dead ReLUs do not recover: lower the learning rate, check the preprocessing (GCN+ZCA), or change the init or seed.",
            r.epoch + 1,
            100.0 * r.dead_fraction
        )
    } else {
        format!(
            "the training loss in epoch {} is {:.4}, at chance ln({classes}) = {chance:.4}: the run may be stuck (the paper's protocol starts slowly; if this persists, lower the learning rate).",
            r.epoch + 1,
            r.train_loss
        )
    })
}

/// The name of class `c`, or `class C` past the run's names.
pub(crate) fn class_name(names: &[String], c: u32) -> String {
    names
        .get(c as usize)
        .cloned()
        .unwrap_or_else(|| format!("class {c}"))
}

/// A warning when some class maps (not all: that is [`stuck_warning`]'s)
/// were silent for a whole epoch. A map silent on every one of its images
/// gets no gradient; with augmentation one can come back as the features
/// under it change, so this reports rather than stops (stopping is
/// `dead_patience_steps`' job).
pub(crate) fn silent_warning(r: &EpochRecord, classes: usize) -> Option<String> {
    let n = r.silent_classes.len();
    if n == 0 || n >= classes {
        return None;
    }
    let (maps, were) = if n == 1 {
        ("map", "was")
    } else {
        ("maps", "were")
    };
    Some(format!(
        "the class {maps} of {} {were} silent for all of epoch {} (the logit 0 for every one of their training images): no gradient reached {} in it",
        r.silent_classes.join(", "),
        r.epoch + 1,
        if n == 1 { "it" } else { "them" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step is dead from 95% of its examples on; a streak of them trips
    /// the watch after `patience` steps, and one live step resets it.
    #[test]
    fn nearly_all_dead_steps_count_as_dead() {
        assert!(mostly_dead(256, 256));
        assert!(mostly_dead(253, 256), "1-3 live examples in a dead run");
        assert!(mostly_dead(95, 100));
        assert!(!mostly_dead(94, 100));
        assert!(!mostly_dead(0, 0));
        let mut w = DeadWatch::default();
        let none: (&[u32], &[u32]) = (&[], &[]);
        assert_eq!(w.observe(10, true, none, 3), None);
        assert_eq!(w.observe(11, false, none, 3), None);
        assert_eq!(w.observe(12, true, none, 3), None);
        assert_eq!(w.observe(13, true, none, 3), None);
        assert_eq!(w.observe(14, true, none, 3), Some((12, 3, vec![])));
    }

    /// A class map silent for every example of `patience` consecutive steps
    /// with examples of it trips the watch with its class; a step where it
    /// fires resets its streak alone, a step without the class leaves it
    /// alone, and patience 0 never trips.
    #[test]
    fn a_class_map_silent_step_after_step_is_dead() {
        let mut w = DeadWatch::default();
        let all: &[u32] = &[0, 1, 2, 3, 4, 5];
        // Class 2 silent from step 0, class 5 from step 1, class 0 once.
        assert_eq!(w.observe(0, false, (all, &[0, 2]), 3), None);
        assert_eq!(w.observe(1, false, (all, &[2, 5]), 3), None);
        assert_eq!(
            w.observe(2, false, (all, &[2, 5]), 3),
            Some((0, 3, vec![2]))
        );
        assert_eq!(
            w.observe(3, false, (all, &[2, 5]), 3),
            Some((1, 3, vec![2, 5]))
        );
        // Class 2 fires once: only class 5 stays dead.
        assert_eq!(w.observe(4, false, (all, &[5]), 3), Some((1, 3, vec![5])));
        assert_eq!(w.observe(5, false, (all, &[]), 3), None);
        // Class 1 is silent whenever it is in the batch, and absent in
        // between: its absent steps neither count nor reset.
        assert_eq!(w.observe(6, false, (&[0, 1], &[1]), 3), None);
        assert_eq!(w.observe(7, false, (&[0, 2], &[]), 3), None);
        assert_eq!(w.observe(8, false, (&[1, 2], &[1]), 3), None);
        assert_eq!(w.observe(9, false, (&[0, 2], &[]), 3), None);
        assert_eq!(w.observe(10, false, (&[1], &[1]), 3), Some((6, 3, vec![1])));
        let mut off = DeadWatch::default();
        for step in 0..10 {
            assert_eq!(off.observe(step, true, (all, &[0, 1]), 0), None);
        }
    }
}
