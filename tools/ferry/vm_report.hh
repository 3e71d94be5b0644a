#pragma once
// How a VM's status and snapshot figures look to users: JSON for scripts
// (the control API's answers), and readable text for the terminal.
#include <string>

#include <nlohmann/json.hpp>

#include "kvm/machine.hh"

namespace ferry::cli {

nlohmann::json status_json(const kvm::MachineStatus& s);
nlohmann::json snapshot_json(const kvm::SnapshotFigures& f, const std::string& path);

// Both render the JSON form, so the text and --json never disagree.
std::string status_text(const nlohmann::json& status);
std::string snapshot_text(const nlohmann::json& snapshot);

// "64M", "2G", "512K", or a bare number of MiB.
Result<std::uint64_t> parse_size_mib_default(const std::string& text);

}  // namespace ferry::cli
