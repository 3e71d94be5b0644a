#pragma once
// Tiny real-mode guest programs for KVM tests and the self-test: each stores
// one marker byte into a list of pages, then halts. Hand-encoded because
// they are a handful of instructions; the full test guest is compiled C.
#include <cstdint>
#include <vector>

#include "base/error.hh"

namespace ferry::kvm {

class Vcpu;

// The byte the program for `round` stores into page `gfn`; never zero, so an
// unwritten page is distinguishable from a written one.
std::uint8_t real_mode_marker(std::uint64_t gfn, std::uint64_t round);

// Code that writes real_mode_marker(gfn, round) at offset `byte_offset` of
// each page (gfn < 256: real mode reaches 1 MiB), then HLT. 10 bytes per page.
std::vector<std::uint8_t> real_mode_write_pages(const std::vector<std::uint64_t>& gfns, std::uint64_t round,
                                                std::uint16_t byte_offset = 0);

// Points the vCPU at `code_gpa` in real mode with flat (base 0) CS.
Status real_mode_enter(Vcpu& vcpu, std::uint64_t code_gpa);

}  // namespace ferry::kvm
