// The test binary's main(): see tests/parallel/comm/mpi_test_main.h.
#include "tests/parallel/comm/mpi_test_main.h"

int main(int argc, char** argv) { return tessera::parallel::testing::RunMpiTests(argc, argv); }
