// A minimal checker for the emulator tests: counts cases, prints failures, returns the exit status.
#pragma once

#include <cmath>
#include <cstdio>
#include <exception>
#include <string>

namespace cudasim_test {

class Checker {
 public:
  explicit Checker(const char* suite) : suite_(suite) {}

  bool expect(bool ok, const std::string& what) {
    ++cases_;
    if (!ok) {
      ++failures_;
      std::fprintf(stderr, "%s: FAILED: %s\n", suite_, what.c_str());
    }
    return ok;
  }

  // `fn` must throw an exception whose message contains `needle`.
  template <typename F>
  bool expect_error(F&& fn, const std::string& needle, const std::string& what) {
    std::string msg;
    try {
      fn();
    } catch (const std::exception& e) {
      msg = e.what();
    }
    const bool ok = !msg.empty() && msg.find(needle) != std::string::npos;
    if (!ok)
      std::fprintf(stderr, "%s: expected an error containing \"%s\", got \"%s\"\n", suite_, needle.c_str(),
                   msg.empty() ? "(no error)" : msg.c_str());
    return expect(ok, what);
  }

  int finish() const {
    std::printf("%s: %d of %d cases passed\n", suite_, cases_ - failures_, cases_);
    return failures_ ? 1 : 0;
  }

  int failures() const { return failures_; }

 private:
  const char* suite_;
  int cases_ = 0;
  int failures_ = 0;
};

}  // namespace cudasim_test
