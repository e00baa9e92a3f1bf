import effect from "@effect/eslint-plugin"
import tseslint from "typescript-eslint"

export default tseslint.config(
  { ignores: ["node_modules/**", "data/**", "dist/**", ".tmp/**", "bench/reference/dist/**", "**/*.generated.ts"] },
  ...tseslint.configs.recommended,
  {
    files: ["**/*.ts"],
    plugins: { "@effect": effect },
    rules: {
      "@effect/dprint": ["error", {
        config: {
          indentWidth: 2,
          lineWidth: 120,
          semiColons: "asi",
          quoteStyle: "alwaysDouble",
          trailingCommas: "never",
          operatorPosition: "maintain",
          "arrowFunction.useParentheses": "force"
        }
      }],
      "@typescript-eslint/no-explicit-any": "off",
      "@typescript-eslint/no-namespace": "off",
      "@typescript-eslint/array-type": ["error", { default: "generic", readonly: "generic" }],
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-empty-object-type": "off",
      "no-restricted-syntax": ["error", {
        selector: "ThrowStatement",
        message: "No thrown exceptions in domain or bus code: fail in the error channel with a Schema.TaggedError"
      }]
    }
  },
  {
    // Library and service code import modules, not barrels, as Effect's own packages do.
    files: ["src/**/*.ts"],
    rules: {
      "@effect/no-import-from-barrel-package": ["error", { packageNames: ["effect", "@effect/platform", "@effect/sql"] }]
    }
  },
  {
    // The library never imports the order domain or the server.
    files: ["src/*.ts", "src/sql/**/*.ts", "src/testing/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", { patterns: ["**/orders/**", "**/server/**", "./orders/*", "./server/*"] }]
    }
  },
  {
    files: ["test/**/*.ts", "bench/**/*.ts", "*.config.ts"],
    rules: { "no-restricted-syntax": "off" }
  },
  {
    // Type tests declare values only to take their types.
    files: ["test/**/*.test-d.ts"],
    rules: { "@typescript-eslint/no-unused-vars": "off" }
  }
)
