# A small front for CMake: `make` builds build/hubcap, `make test` runs the suite.
BUILD ?= build
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all test test-all test-cuda asan fuzz clean

all: $(BUILD)/Makefile
	@cmake --build $(BUILD) -j $(JOBS)

$(BUILD)/Makefile:
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

test: all
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE 'cuda|slow'

test-all: all
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE cuda

# On a machine with an NVIDIA GPU: the CUDA op, conformance and generation tests.
test-cuda: all
	@cd $(BUILD) && ctest --output-on-failure -L cuda

asan:
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHUBCAP_SANITIZE=ON $(CMAKE_FLAGS)
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && ctest --output-on-failure -j $(JOBS) -LE 'cuda|slow'

fuzz:
	@CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DHUBCAP_FUZZ=ON
	@cmake --build build-fuzz -j $(JOBS) --target fuzz_json fuzz_safetensors fuzz_template fuzz_tokenizer fuzz_encode fuzz_config fuzz_messages fuzz_weights fuzz_lora

clean:
	rm -rf $(BUILD) build-asan build-fuzz
