import { defaultServerConditions } from "vite"
import { defineConfig } from "vitest/config"

export default defineConfig({
  // Tests that import the package by name get its sources, not a dist/ that
  // may be older than them.
  // Vitest's own server conditions otherwise: Vite's without "module".
  ssr: {
    resolve: {
      conditions: [
        "effect-command-bus-source",
        ...defaultServerConditions.filter((condition) => condition !== "module")
      ]
    }
  },
  test: {
    include: ["test/**/*.test.ts"],
    typecheck: {
      enabled: true,
      include: ["test/**/*.test-d.ts"],
      tsconfig: "./tsconfig.json"
    },
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})
