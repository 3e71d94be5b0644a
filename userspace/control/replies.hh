#pragma once
// The control API's answers as JSON, built in one place: what `ferry
// status`, `snapshot` and `dirty-rate` print with --json, and what the CLI
// renders as text (tools/ferry/vm_report.hh), so the two never disagree.
#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "kvm/machine.hh"
#include "userspace/migration/dirty_rate.hh"

namespace ferry::control {

using json = nlohmann::json;

json status_json(const kvm::MachineStatus& s);
json snapshot_json(const kvm::SnapshotFigures& f, const std::string& path);
json dirty_rate_json(const migration::DirtyRateResult& r, std::chrono::milliseconds harvest);

}  // namespace ferry::control
