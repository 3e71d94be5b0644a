#pragma once
// Follows a VM's migration through its control API. The `migration` command
// answers with at most migration::kRoundsPerAnswer rounds from `since_round`
// on, so an answer never outgrows the API's line limit however many rounds a
// migration takes (it used to: "answer from ... too long" after enough
// rounds). The follower keeps the rounds it has seen and asks only for new
// ones, so each poll costs the same at round 5 and at round 500.
#include <chrono>
#include <string>

#include "userspace/base/error.hh"
#include "userspace/control/api.hh"

namespace ferry::control {

class MigrationFollower {
 public:
  explicit MigrationFollower(std::string vm) : vm_(std::move(vm)) {}

  // The migration's status with every round so far, in the shape
  // migration::to_json(status) gives.
  Result<json> poll(std::chrono::milliseconds timeout = std::chrono::seconds(5));

 private:
  std::string vm_;
  json rounds_ = json::array();
};

}  // namespace ferry::control
