//! The pipeline file as TOML writes it: serde rows, every value still text.
//! `check` turns them into a [`super::Pipeline`] or a list of problems.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PipelineFile {
    pub(super) fields: FieldsSection,
    pub(super) statuses: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) allowlist: AllowlistSection,
    #[serde(default, rename = "rule")]
    pub(super) rules: Vec<RuleRow>,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RouteRow>,
    #[serde(default, rename = "timer")]
    pub(super) timers: Vec<TimerRowFile>,
    #[serde(default)]
    pub(super) retention: Option<RetentionSection>,
    #[serde(default)]
    pub(super) input: InputSection,
}

/// `[input]`: what the records' form does not say about themselves.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct InputSection {
    /// "full" (the default) or "partial".
    pub(super) debezium_flattened_updates: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimerRowFile {
    pub(super) event: String,
    pub(super) state: String,
    pub(super) field: String,
    pub(super) after: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RetentionSection {
    pub(super) after: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteRow {
    pub(super) topic: String,
    pub(super) events: Vec<String>,
}

/// Document paths of the tracked values; each defaults to PRODUCT.md's name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldsSection {
    #[serde(default = "d_id")]
    pub(super) id: String,
    #[serde(default = "d_status")]
    pub(super) status: String,
    #[serde(default = "d_property")]
    pub(super) property: String,
    #[serde(default = "d_room")]
    pub(super) room: String,
    #[serde(default = "d_arrival")]
    pub(super) arrival: String,
    #[serde(default = "d_departure")]
    pub(super) departure: String,
}
fn d_id() -> String {
    "_id".into()
}
fn d_status() -> String {
    "bookingStatus".into()
}
fn d_property() -> String {
    "propertyId".into()
}
fn d_room() -> String {
    "roomNumber".into()
}
fn d_arrival() -> String {
    "arrivalDate".into()
}
fn d_departure() -> String {
    "departureDate".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AllowlistSection {
    pub(super) properties: PropertyList,
}

impl Default for AllowlistSection {
    fn default() -> Self {
        AllowlistSection { properties: PropertyList::One("*".into()) }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum PropertyList {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleRow {
    pub(super) from: String,
    pub(super) to: String,
    #[serde(default)]
    pub(super) changed: Vec<String>,
    pub(super) emit: Vec<String>,
}
