//! Scoring maths the rules share: pure functions over timestamps and sizes, with no notion of
//! flows, rules or alarms. It sits below the flow table (which keeps connection-start rings)
//! and the labels (which keep message rings), so neither has to import a detector.

pub mod periodicity;
