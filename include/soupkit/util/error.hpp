#pragma once
// Error types and the SOUPKIT_ERROR_IF macro. Every user-facing failure is an
// soupkit::Error whose message names the file, tensor and problem; the CLI
// prints it once and exits with status 1.
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace soupkit {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Malformed or inconsistent input (a checkpoint, a job file, options).
class InputError : public Error {
 public:
  using Error::Error;
};

// Failure of the operating system or a library (I/O, HDF5, MPI).
class SystemError : public Error {
 public:
  using Error::Error;
};

// Thrown from the HDF5 wrappers, with the innermost HDF5 error text attached.
class Hdf5Error : public SystemError {
 public:
  using SystemError::SystemError;
};

// Thrown when an MPI call fails (SOUPKIT_MPI_CALL), naming the call.
class MpiError : public SystemError {
 public:
  using SystemError::SystemError;
};

}  // namespace soupkit

// Throws `type` with a fmt-formatted message when `cond` holds.
#define SOUPKIT_THROW_IF(cond, type, ...)            \
  do {                                               \
    if (cond) throw type(fmt::format(__VA_ARGS__));  \
  } while (0)

#define SOUPKIT_INPUT_ERROR_IF(cond, ...) SOUPKIT_THROW_IF(cond, ::soupkit::InputError, __VA_ARGS__)
#define SOUPKIT_ERROR_IF(cond, ...) SOUPKIT_THROW_IF(cond, ::soupkit::Error, __VA_ARGS__)
