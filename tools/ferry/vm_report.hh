#pragma once
// How a VM's status and snapshot figures look on a terminal: readable text
// rendered from the control API's JSON answers.
#include <string>

#include <nlohmann/json.hpp>

#include "kvm/machine.hh"
#include "userspace/control/replies.hh"

namespace ferry::cli {

// The JSON forms are the control API's answers (userspace/control).
using control::snapshot_json;
using control::status_json;

// Both render the JSON form, so the text and --json never disagree.
std::string status_text(const nlohmann::json& status);
std::string snapshot_text(const nlohmann::json& snapshot);

// "64M", "2G", "512K", or a bare number of MiB.
Result<std::uint64_t> parse_size_mib_default(const std::string& text);

}  // namespace ferry::cli
