#include "kvm/selftest.hh"

#include <chrono>
#include <cstring>

#include "kvm/exit_reason.hh"
#include "kvm/guest_memory.hh"
#include "kvm/system.hh"

namespace ferry::kvm {
namespace {

// The byte the guest stores into page `gfn`; never zero, so a page that was
// not written is distinguishable from one that was.
std::uint8_t marker(std::uint64_t gfn, std::size_t round) {
  return static_cast<std::uint8_t>(((gfn * 7 + round * 13) & 0xfe) | 1);
}

// Real-mode code: for each page, load DS with the page's paragraph and store
// one byte at offset 0, then HLT. Hand-encoded because the guest is five
// instructions; the full test guest of later work is compiled C.
std::vector<std::uint8_t> write_pages_code(const std::vector<std::uint64_t>& gfns, std::size_t round) {
  std::vector<std::uint8_t> code;
  for (std::uint64_t gfn : gfns) {
    const auto seg = static_cast<std::uint16_t>(gfn << 8);  // gfn * 4096 / 16
    code.insert(code.end(), {0xB8, static_cast<std::uint8_t>(seg), static_cast<std::uint8_t>(seg >> 8)});  // mov ax, seg
    code.insert(code.end(), {0x8E, 0xD8});                                                              // mov ds, ax
    code.insert(code.end(), {0xC6, 0x06, 0x00, 0x00, marker(gfn, round)});                             // mov byte [0], imm8
  }
  code.push_back(0xF4);  // hlt
  return code;
}

Status validate(const DirtyRingSelftestOptions& o) {
  if (o.rounds.empty()) return fail("self-test: no rounds given");
  if (o.rounds.size() > kSelftestCodePages) return fail("self-test: at most {} rounds", kSelftestCodePages);
  for (const auto& r : o.rounds) {
    if (r.size() * 10 + 1 > kPageSize) return fail("self-test: at most {} pages per round", (kPageSize - 1) / 10);
    for (auto g : r)
      if (g < kSelftestCodePages || g >= kSelftestMemoryBytes / kPageSize)
        return fail("self-test: gfn {} outside {}..{}", g, kSelftestCodePages, kSelftestMemoryBytes / kPageSize - 1);
  }
  return {};
}

}  // namespace

std::string_view dirty_ring_mode_name(DirtyRingMode m) {
  switch (m) {
    case DirtyRingMode::kOff: return "off";
    case DirtyRingMode::kPlain: return "dirty-ring";
    case DirtyRingMode::kAcqRel: return "dirty-ring-acq-rel";
  }
  return "?";
}

Result<DirtyRingSelftestReport> run_dirty_ring_selftest(const DirtyRingSelftestOptions& opts) {
  if (auto ok = validate(opts); !ok) return std::unexpected(ok.error());
  const auto start = std::chrono::steady_clock::now();

  auto kvm = Kvm::open(opts.kvm_path);
  if (!kvm) return std::unexpected(kvm.error());
  auto vm = kvm->create_vm();
  if (!vm) return std::unexpected(vm.error());
  // Order matters: the ring must exist before the first vCPU.
  if (auto ok = vm->enable_dirty_ring(opts.ring_bytes); !ok) return std::unexpected(ok.error());
  const std::uint64_t code_bytes = kSelftestCodePages * kPageSize;
  auto code_mem = GuestRegion::create(kSelftestCodeSlot, 0, code_bytes, "ferry-selftest-code");
  if (!code_mem) return std::unexpected(code_mem.error());
  auto mem = GuestRegion::create(kSelftestDataSlot, code_bytes, kSelftestMemoryBytes - code_bytes, "ferry-selftest-data");
  if (!mem) return std::unexpected(mem.error());
  if (auto ok = vm->set_memory_region(*code_mem, /*log_dirty=*/false); !ok) return std::unexpected(ok.error());
  if (auto ok = vm->set_memory_region(*mem, /*log_dirty=*/true); !ok) return std::unexpected(ok.error());
  auto vcpu = vm->create_vcpu(0);
  if (!vcpu) return std::unexpected(vcpu.error());

  DirtyRingSelftestReport report;
  report.api_version = kvm->api_version();
  report.mode = vm->dirty_ring_mode();
  report.ring_entries = vcpu->dirty_ring()->entries();

  for (std::size_t round = 0; round < opts.rounds.size(); ++round) {
    DirtyRingRound rr;
    rr.written = opts.rounds[round];
    // The VMM writes the code through its own mapping: KVM does not see
    // these writes, so they never appear in the ring (the point of the test).
    const auto code = write_pages_code(rr.written, round);
    const std::uint64_t code_gpa = round * kPageSize;
    std::memcpy(code_mem->host_at(code_gpa), code.data(), code.size());

    auto sregs = vcpu->get_sregs();
    if (!sregs) return std::unexpected(sregs.error());
    sregs->cs.base = 0;
    sregs->cs.selector = 0;
    if (auto ok = vcpu->set_sregs(*sregs); !ok) return std::unexpected(ok.error());
    kvm_regs regs{};
    regs.rip = code_gpa;
    regs.rflags = 0x2;  // bit 1 is reserved-as-one
    if (auto ok = vcpu->set_regs(regs); !ok) return std::unexpected(ok.error());

    auto collect = [&] {
      rr.harvested += vcpu->dirty_ring()->harvest([&](const DirtyGfn& g) { rr.reported.push_back(g); });
      auto n = vm->reset_dirty_rings();
      if (!n) return Status(std::unexpected(n.error()));
      rr.reset += *n;
      return Status{};
    };

    for (;;) {
      if (auto ok = vcpu->run_once(); !ok) return std::unexpected(ok.error());
      const auto reason = vcpu->run().exit_reason;
      if (reason == KVM_EXIT_HLT) break;
      if (reason == KVM_EXIT_DIRTY_RING_FULL) {
        // The vCPU cannot continue until we make room: harvest + reset.
        ++rr.ring_full_exits;
        if (auto ok = collect(); !ok) return std::unexpected(ok.error());
        continue;
      }
      if (reason == KVM_EXIT_INTR) continue;
      auto name = exit_reason_name(reason);
      return fail("self-test round {}: unexpected vCPU exit {} ({})", round, name.empty() ? "?" : name, reason);
    }
    if (auto ok = collect(); !ok) return std::unexpected(ok.error());
    rr.memory_matches = true;
    for (auto g : rr.written)
      if (static_cast<std::uint8_t>(*mem->host_at(g * kPageSize)) != marker(g, round)) rr.memory_matches = false;
    report.rounds.push_back(std::move(rr));
  }
  report.elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace ferry::kvm
