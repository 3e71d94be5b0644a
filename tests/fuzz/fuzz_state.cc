// The CPU/device state image reader (kvm/state/format.hh), which also reads
// snapshots' state and the STATE frame's image: any bytes it accepts
// re-encode (StateWriter) to exactly the same bytes.
#include <cstdint>

#include "kvm/state/format.hh"
#include "tests/fuzz/fuzz_common.hh"

using namespace ferry;
using namespace ferry::kvm::state;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::write_seeds_if_asked([] {
    std::vector<std::vector<std::byte>> seeds;
    StateWriter w;
    seeds.push_back(w.finish());
    const std::vector<std::byte> a(40, std::byte{7}), b(3, std::byte{9});
    w.add(SectionType::kVcpu, 0, 1, a);
    w.add(SectionType::kVcpu, 1, 1, a);
    w.add(SectionType::kIrqchip, 0, 1, b);
    seeds.push_back(w.finish());
    return seeds;
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto in = std::as_bytes(std::span(data, size));
  auto image = parse_state(in, 1 << 20);
  if (!image) return 0;
  StateWriter w;
  for (const Section& s : image->sections) w.add(s.type, s.instance, s.version, s.payload);
  auto again = w.finish();
  // The writer writes the current minor version; the reader also takes
  // older ones, which then differ in the header (and its checksums).
  if (image->minor != kFormatMinor) return 0;
  fuzz::expect_same(in, again, "a state image");
  return 0;
}
