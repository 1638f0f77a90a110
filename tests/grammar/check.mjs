// Parses queries with Grafana's own grammars (the ones Grafana's query
// editors use) and prints, as JSON, one result per query: whether the
// parse has error nodes, and the stream selector labels and the label
// filters it contains, for tests/pipeline.rs to check.
//
// stdin: [{"lang": "logql" | "traceql", "query": "...", "where": "..."}]
import { parser as logql } from "@grafana/lezer-logql";
import { parser as traceql } from "@grafana/lezer-traceql";
import { readFileSync } from "node:fs";

const input = JSON.parse(readFileSync(0, "utf8"));
const results = input.map(({ lang, query, where }) => {
  const parser = lang === "logql" ? logql : traceql;
  const tree = parser.parse(query);
  const errors = [];
  const selectorLabels = [];
  const filterLabels = [];
  tree.iterate({
    enter(node) {
      if (node.type.isError) {
        errors.push(`${node.from}: …${query.slice(Math.max(0, node.from - 10), node.to + 10)}…`);
      }
      if (lang === "logql" && node.name === "Matcher") {
        // Matcher → Identifier op String; inside a Selector it is a stream
        // label, inside a LabelFilter a filter on an extracted or
        // metadata label.
        const name = node.node.getChild("Identifier");
        if (name) {
          const label = query.slice(name.from, name.to);
          let parent = node.node.parent;
          while (parent && parent.name !== "Selector" && parent.name !== "LabelFilter") {
            parent = parent.parent;
          }
          if (parent && parent.name === "Selector") selectorLabels.push(label);
          else filterLabels.push(label);
        }
      }
    },
  });
  return { where, lang, query, errors, selectorLabels, filterLabels };
});
process.stdout.write(JSON.stringify(results));
