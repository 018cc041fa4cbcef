//! Kubernetes' `duration.HumanDuration`: the AGE column's format.

use std::time::Duration;

/// Formats a signed age in seconds the way `kubectl get` shows it. Up to one
/// second in the future counts as `0s` (clock skew); further is `<invalid>`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    human(Duration::from_secs(seconds as u64))
}

fn human(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let days = hours / 24;
        let dy = days % 365;
        return if dy == 0 {
            format!("{}y", days / 365)
        } else {
            format!("{}y{dy}d", days / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            ("far future", -5, "<invalid>"),
            ("skew", -1, "0s"),
            ("seconds", 59, "59s"),
            ("under two minutes", 119, "119s"),
            ("minutes and seconds", 150, "2m30s"),
            ("whole minutes", 180, "3m"),
            ("minutes only past ten", 15 * 60 + 7, "15m"),
            ("hours and minutes", 3 * 3600 + 5 * 60, "3h5m"),
            ("hours", 20 * 3600, "20h"),
            ("days and hours", 3 * 86400 + 4 * 3600, "3d4h"),
            ("days", 30 * 86400, "30d"),
            ("years and days", 3 * 365 * 86400 + 10 * 86400, "3y10d"),
            ("years", 9 * 365 * 86400, "9y"),
        ];
        for (name, secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{name}");
        }
    }
}
