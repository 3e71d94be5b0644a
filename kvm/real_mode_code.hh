#pragma once
// Tiny real-mode guest programs for KVM tests and the self-test: each stores
// one marker byte into a list of pages, then halts. Hand-encoded because
// they are a handful of instructions; the full test guest is compiled C.
#include <cstdint>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::kvm {

class Vcpu;

// The byte the program for `round` stores into page `gfn`; never zero, so an
// unwritten page is distinguishable from a written one.
std::uint8_t real_mode_marker(std::uint64_t gfn, std::uint64_t round);

// Code that writes real_mode_marker(gfn, round) at offset `byte_offset` of
// each page (gfn < 256: real mode reaches 1 MiB), then HLT. 10 bytes per page.
std::vector<std::uint8_t> real_mode_write_pages(const std::vector<std::uint64_t>& gfns, std::uint64_t round,
                                                std::uint16_t byte_offset = 0);

// Code that stores `value` into the first byte of `pages` consecutive pages
// from `first_gpa` (anywhere below 4 GiB), then HLT. Needs a flat 4 GiB DS
// ("unreal mode", see real_mode_enter): it addresses with 32-bit registers.
std::vector<std::uint8_t> real_mode_write_range(std::uint32_t first_gpa, std::uint32_t pages, std::uint8_t value);

// Points the vCPU at `code_gpa` in real mode with flat (base 0) CS, and DS
// with base 0 and a 4 GiB limit. The limit is harmless for 16-bit code and
// lets 32-bit addressing reach all guest memory below 4 GiB.
Status real_mode_enter(Vcpu& vcpu, std::uint64_t code_gpa);

}  // namespace ferry::kvm
