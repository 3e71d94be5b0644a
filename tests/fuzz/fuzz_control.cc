// The control API's request parser on any line a client may send: a JSON
// value (or not), then parse_request for its "cmd". Nothing may crash,
// hang or touch memory it should not (ASan/UBSan); what parses names a
// command that exists.
#include <cstdint>

#include <nlohmann/json.hpp>

#include "tests/fuzz/fuzz_common.hh"
#include "userspace/control/requests.hh"

using namespace ferry;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::write_seeds_if_asked([] {
    std::vector<std::vector<std::byte>> seeds;
    for (const char* line :
         {R"({"cmd":"status","id":7})", R"({"cmd":"snapshot","path":"/tmp/x.snap"})",
          R"({"cmd":"memory-write","gpa":4096,"hex":"00ff"})", R"({"cmd":"memory-read","gpa":0,"len":16})",
          R"({"cmd":"migrate","to":"10.0.0.2:7000","downtime_limit_ms":300,"streams":2,"verify":true})",
          R"({"cmd":"dirty-rate","seconds":0.5,"harvest_ms":50})", R"({"cmd":"resolve","migrated":false})",
          R"({"cmd":"console","input":"ls\n"})", R"({"cmd":"quit"})"})
      seeds.push_back(fuzz::bytes_of(line));
    return seeds;
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string line(reinterpret_cast<const char*>(data), size);
  const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return 0;
  const auto cmd = j.find("cmd");
  if (cmd == j.end() || !cmd->is_string()) return 0;
  auto r = control::parse_request(cmd->get<std::string>(), j);
  if (r && control::command_name(*r) != cmd->get<std::string>()) {
    std::fprintf(stderr, "parse_request(%s) gave a %s request\n", cmd->get<std::string>().c_str(),
                 std::string(control::command_name(*r)).c_str());
    std::abort();
  }
  return 0;
}
