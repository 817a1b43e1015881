//! Calendar arithmetic for billing periods (months clamp to the month's last day,
//! as Stripe's billing cycle anchors do).

/// Days since 1970-01-01 → (year, month 1-12, day 1-31). Howard Hinnant's civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)) as u32
}

/// The calendar (year, month 1-12) of unix time `t`.
pub fn year_month(t: i64) -> (i64, u32) {
    let (y, m, _) = civil_from_days(t.div_euclid(86_400));
    (y, m)
}

/// `t` plus `count` billing `interval`s (`day`, `week`, `month`, `year`).
pub fn add_interval(t: i64, interval: &str, count: i64) -> i64 {
    match interval {
        "day" => t + 86_400 * count,
        "week" => t + 7 * 86_400 * count,
        "month" | "year" => {
            let months = if interval == "year" {
                12 * count
            } else {
                count
            };
            let days = t.div_euclid(86_400);
            let secs = t.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            let total = y * 12 + i64::from(m) - 1 + months;
            let (ny, nm) = (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32);
            let nd = d.min(days_in_month(ny, nm));
            days_from_civil(ny, nm, nd) * 86_400 + secs
        }
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_after_january_31st_is_the_last_day_of_february() {
        // 2026-01-31T10:00:00Z
        let jan31 = days_from_civil(2026, 1, 31) * 86_400 + 36_000;
        let next = add_interval(jan31, "month", 1);
        assert_eq!(civil_from_days(next.div_euclid(86_400)), (2026, 2, 28));
        assert_eq!(next.rem_euclid(86_400), 36_000);
    }

    #[test]
    fn a_year_and_weeks_and_days_add_as_expected() {
        let t = days_from_civil(2024, 2, 29) * 86_400;
        assert_eq!(
            civil_from_days(add_interval(t, "year", 1) / 86_400),
            (2025, 2, 28)
        );
        assert_eq!(add_interval(t, "week", 2) - t, 14 * 86_400);
        assert_eq!(add_interval(t, "day", 3) - t, 3 * 86_400);
    }
}
