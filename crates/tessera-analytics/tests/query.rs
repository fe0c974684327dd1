//! The query language: what parses, and refusals that name the token and
//! its position; bounds and groups come from the schema, never the data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use tessera_analytics::query::{Aggregate, CompareOp, Expr, Item, Literal};
use tessera_analytics::{AnalyticsError, Values, parse};
use tessera_privacy::{Budgets, Ledger};

#[test]
fn the_issue_example_parses() {
    let q = parse(
        "SELECT age_band, count(*), mean(time_in_hospital), quantile(num_medications, 0.9) \
         FROM data WHERE readmitted = '<30' GROUP BY age_band CLAMP age 0 120",
    )
    .unwrap();
    assert_eq!(q.items.len(), 4);
    assert_eq!(q.items[0], Item::Column("age_band".into()));
    assert_eq!(q.items[1], Item::Aggregate(Aggregate::Count));
    assert_eq!(
        q.items[3],
        Item::Aggregate(Aggregate::Quantile("num_medications".into(), 0.9))
    );
    assert_eq!(
        q.filter,
        Some(Expr::Compare(
            "readmitted".into(),
            CompareOp::Eq,
            Literal::Text("<30".into())
        ))
    );
    assert_eq!(q.group_by, ["age_band"]);
    assert_eq!(q.clamps, [("age".to_string(), 0.0, 120.0)]);
}

#[test]
fn quoted_column_names_may_hold_any_character() {
    let q = parse(r#"SELECT "age band", mean("time-in-hospital") FROM data GROUP BY "age band""#)
        .unwrap();
    assert_eq!(q.items[0], Item::Column("age band".into()));
    assert_eq!(
        q.items[1],
        Item::Aggregate(Aggregate::Mean("time-in-hospital".into()))
    );
    assert_eq!(q.group_by, ["age band"]);
    let (pos, _, message) = parse_error(r#"SELECT mean("age) FROM data"#);
    assert_eq!(pos, 13);
    assert!(message.contains("never closed"), "{message}");
}

#[test]
fn and_binds_tighter_than_or_and_not_applies_to_in() {
    let q =
        parse("select count(*) from data where a = 1 or b = 2 and not c in ('x', 'y')").unwrap();
    let Some(Expr::Or(_, right)) = q.filter else {
        panic!("OR at the top: {:?}", q.filter)
    };
    let Expr::And(_, not) = *right else {
        panic!("AND below OR")
    };
    assert!(matches!(*not, Expr::Not(_)));
}

fn parse_error(text: &str) -> (usize, String, String) {
    match parse(text).unwrap_err() {
        AnalyticsError::Parse {
            position,
            token,
            message,
        } => (position, token, message),
        other => panic!("{other}"),
    }
}

#[test]
fn errors_name_the_token_and_its_position() {
    let (pos, token, message) = parse_error("SELECT count(*) FROM data WHERE age >> 3");
    assert_eq!((pos, token.as_str()), (38, "'>'"), "{message}");
    let (pos, token, _) = parse_error("SELECT median(age) FROM data");
    assert_eq!((pos, token.as_str()), (8, "'median'"));
    let (pos, token, message) = parse_error("SELECT count(*) FROM data GROUP age");
    assert_eq!((pos, token.as_str()), (33, "'age'"));
    assert!(message.contains("BY"), "{message}");
    let (pos, _, message) = parse_error("SELECT quantile(age, 1.5) FROM data");
    assert_eq!(pos, 22);
    assert!(message.contains("[0, 1]"), "{message}");
    let (_, token, _) = parse_error("SELECT count(*) FROM data WHERE x = 'open");
    assert_eq!(token, "'''");
    let (_, token, _) = parse_error("SELECT count(*) FROM");
    assert_eq!(token, "the end of the query");
}

#[test]
fn a_numeric_aggregate_without_bounds_is_refused_naming_the_column() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let mut ledger = Ledger::new(Budgets::default());
    let error = tessera_analytics::answer(
        "SELECT mean(chol) FROM data",
        &schema,
        &sites,
        &common::exact(),
        &mut ledger,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("'chol' has no bounds"), "{error}");
    assert!(error.contains("CLAMP chol"), "{error}");
    let error = tessera_analytics::answer(
        "SELECT count(*) FROM data GROUP BY age",
        &schema,
        &sites,
        &common::exact(),
        &mut ledger,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("GROUP BY age"), "{error}");
    let error = tessera_analytics::answer(
        "SELECT count(*) FROM data WHERE cp = 7",
        &schema,
        &sites,
        &common::exact(),
        &mut ledger,
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("'7' is not a level of column 'cp'"),
        "{error}"
    );
}

#[test]
fn every_agreed_group_is_answered_even_when_no_row_has_it() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let mut ledger = Ledger::new(Budgets::default());
    // No row has cp = 1 and cp = 2 at once: every cp level is still a group.
    let report = tessera_analytics::answer(
        "SELECT cp, count(*) FROM data WHERE cp = 4 GROUP BY cp",
        &schema,
        &sites,
        &common::exact(),
        &mut ledger,
        1,
    )
    .unwrap();
    let groups = &report.answers[0].groups;
    assert_eq!(groups.len(), 4);
    assert_eq!(groups[0].key, ["1"]);
    // Empty groups are suppressed (count 0 is below any threshold), not left out.
    assert!(groups[0].suppressed && groups[1].suppressed && groups[2].suppressed);
    assert!(!groups[3].suppressed);
}

#[test]
fn deep_or_long_filters_are_refused_with_their_position_not_a_stack_overflow() {
    let parens = format!(
        "SELECT count(*) FROM data WHERE {}age = 1{}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    let e = parse(&parens).unwrap_err();
    assert!(
        matches!(&e, AnalyticsError::Parse { position, .. } if *position == 33 + 64),
        "{e}"
    );
    assert!(e.to_string().contains("more than 64 deep"), "{e}");
    let nots = format!(
        "SELECT count(*) FROM data WHERE {}age = 1",
        "NOT ".repeat(30_000)
    );
    let e = parse(&nots).unwrap_err().to_string();
    assert!(e.contains("65536 bytes"), "{e}");
    let nots = format!(
        "SELECT count(*) FROM data WHERE {}age = 1",
        "NOT ".repeat(10_000)
    );
    let e = parse(&nots).unwrap_err().to_string();
    assert!(e.contains("more than 64 deep"), "{e}");
    assert!(e.contains(&format!("character {}", 33 + 64 * 4)), "{e}");
    let chain = format!(
        "SELECT count(*) FROM data WHERE age = 1{}",
        " AND age = 1".repeat(5_000)
    );
    let e = parse(&chain).unwrap_err().to_string();
    assert!(e.contains("1024 conditions"), "{e}");
    // Within the limits a nested filter parses.
    let ok = format!(
        "SELECT count(*) FROM data WHERE {}age = 1{}",
        "(NOT ".repeat(30),
        ")".repeat(30)
    );
    parse(&ok).unwrap();
}

#[test]
fn matrices_and_in_lists_past_their_limits_are_refused_naming_the_limit() {
    let columns: Vec<String> = (0..65).map(|i| format!("x{i}")).collect();
    let e = parse(&format!("SELECT corr({}) FROM data", columns.join(", ")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("at most 64 columns") && e.contains("given 65"),
        "{e}"
    );
    parse(&format!(
        "SELECT cov({}) FROM data",
        columns[..64].join(", ")
    ))
    .unwrap();
    let values: Vec<String> = (0..1025).map(|i| i.to_string()).collect();
    let e = parse(&format!(
        "SELECT count(*) FROM data WHERE cp IN ({})",
        values.join(", ")
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("1024 values an IN list"), "{e}");
    parse(&format!(
        "SELECT count(*) FROM data WHERE cp IN ({})",
        values[..1024].join(", ")
    ))
    .unwrap();
}

#[test]
fn clamps_without_a_finite_range_or_on_a_categorical_column_and_corr_of_a_column_with_itself_are_refused()
 {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let refuse = |query: &str| {
        let mut ledger = Ledger::new(Budgets::default());
        tessera_analytics::answer(
            query,
            &schema,
            &sites,
            &common::noisy(1.0, 1),
            &mut ledger,
            1,
        )
        .unwrap_err()
        .to_string()
    };
    let e = refuse("SELECT mean(age) FROM data CLAMP age -1e308 1e308");
    assert!(e.contains("CLAMP age") && e.contains("not finite"), "{e}");
    let e = refuse("SELECT count(*) FROM data CLAMP cp 0 4");
    assert!(
        e.contains("CLAMP cp") && e.contains("'cp' is categorical"),
        "{e}"
    );
    let e = refuse("SELECT corr(age, age) FROM data CLAMP age 0 120");
    assert!(e.contains("'age' twice"), "{e}");
    let e = refuse("SELECT cov(age, chol, age) FROM data CLAMP age 0 120, chol 0 700");
    assert!(e.contains("'age' twice"), "{e}");
    let mut config = tessera_analytics::AnalyticsConfig::default();
    config.bounds.insert("age".into(), [-1e308, 1e308]);
    assert!(config.problems()[0].contains("analytics.bounds.age"));
}

#[test]
fn filters_on_levels_and_numbers_count_what_the_rows_say() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let count = |filter: &str| -> f64 {
        let mut ledger = Ledger::new(Budgets::default());
        let query = format!("SELECT count(*) FROM data WHERE {filter}");
        let report =
            tessera_analytics::answer(&query, &schema, &sites, &common::exact(), &mut ledger, 1)
                .unwrap_or_else(|e| panic!("{query}: {e}"));
        report.answers[0].groups[0].statistics[0].values[0]
    };
    let (cp, _) = schema.column("cp").unwrap();
    let (age, _) = schema.column("age").unwrap();
    let truth = |test: &dyn Fn(u32, f64) -> bool| -> f64 {
        let mut n = 0;
        for s in &sites {
            let (Values::Categorical(c), Values::Numeric(a)) = (&s.columns[cp], &s.columns[age])
            else {
                panic!("column kinds")
            };
            n += (0..s.rows).filter(|&r| test(c[r], a[r])).count();
        }
        n as f64
    };
    let present = |c: u32| c != tessera_data::MISSING_LEVEL;
    // Levels "1".."4" are codes 0..3.
    assert_eq!(count("cp IN (1, '3')"), truth(&|c, _| c == 0 || c == 2));
    assert_eq!(
        count("cp NOT IN (1, 3)"),
        truth(&|c, _| present(c) && c != 0 && c != 2)
    );
    assert_eq!(count("cp <> 4"), truth(&|c, _| present(c) && c != 3));
    assert_eq!(
        count("cp = '2' AND age >= 50"),
        truth(&|c, a| c == 1 && a >= 50.0)
    );
    assert_eq!(
        count("NOT (age < 40 OR age IN (60, 61))"),
        truth(&|_, a| !(a < 40.0 || a == 60.0 || a == 61.0))
    );
}

#[test]
fn grouping_by_levels_the_schema_does_not_declare_needs_the_plan_to_make_them_public() {
    let (schema, sites) = common::records("fed-heart-disease.toml");
    let ask = |query: &str, public: bool| {
        let mut settings = common::exact();
        settings.config.public_levels = public;
        let mut ledger = Ledger::new(Budgets::default());
        tessera_analytics::answer(query, &schema, &sites, &settings, &mut ledger, 1)
    };
    // cp's levels are declared in the plan; num's come from the data.
    ask("SELECT cp, count(*) FROM data GROUP BY cp", false).unwrap();
    ask("SELECT crosstab(cp, restecg) FROM data", false).unwrap();
    for query in [
        "SELECT num, count(*) FROM data GROUP BY num",
        "SELECT crosstab(cp, num) FROM data",
    ] {
        let e = ask(query, false).unwrap_err().to_string();
        assert!(
            e.contains("does not declare the levels of 'num'")
                && e.contains("public_levels = true"),
            "{e}"
        );
        ask(query, true).unwrap();
    }
}
