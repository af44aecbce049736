//! The host's CPUs as Linux lists them ("0-3,8,10-11"), and how many there
//! are: one parser for the thread count and for binding.

/// "0-3,8,10-11" -> [0, 1, 2, 3, 8, 10, 11]; None where a part is not a
/// number or a range.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = vec![];
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// [0, 1, 2, 3, 8] -> "0-3,8".
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts = vec![];
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
        i = j + 1;
    }
    parts.join(",")
}

/// How many CPUs a list names, or None for an empty or malformed list.
pub fn count_cpu_list(s: &str) -> Option<usize> {
    parse_cpu_list(s).map(|cpus| cpus.len()).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip_and_count() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert!(parse_cpu_list("a-b").is_none());
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0,2-5,7"), Some(6));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
        assert_eq!(count_cpu_list(""), None);
    }
}
